//! tracing on stderr: human by default, JSON with `--log-format json`; ANSI colours only
//! when stderr is a terminal; under systemd (`JOURNAL_STREAM`) neither colours nor
//! timestamps, which the journal adds.
//!
//! The supervisor's one runtime thread must never block or die on its log: lines go
//! through a bounded queue to a writer thread, and when the queue is full (whoever reads
//! stderr stalled) or stderr is gone (EPIPE) lines are dropped and counted, never waited
//! for. The count is reported at exit ([`dropped`]).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Lines held for a slow reader before dropping starts (~1 MB at ~140 B a line).
const QUEUE_LINES: usize = 8192;

static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUE: OnceLock<SyncSender<Msg>> = OnceLock::new();

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// Log lines dropped so far because stderr was not being read (or was closed).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes queued lines to stderr; on a write error (EPIPE...) drops the rest silently.
fn writer_thread(rx: Receiver<Msg>) {
    let mut broken = false;
    let mut err = std::io::stderr();
    for msg in rx {
        match msg {
            Msg::Line(l) if broken => {
                let _ = l;
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            Msg::Line(l) => {
                if err.write_all(&l).is_err() {
                    broken = true;
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            Msg::Flush(ack) => {
                let _ = err.flush();
                let _ = ack.send(());
            }
        }
    }
}

/// One log line's buffer; queued (or dropped) when the line is complete.
pub struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.0);
        match QUEUE.get() {
            Some(q) => match q.try_send(Msg::Line(line)) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            },
            None => {
                let _ = std::io::stderr().write_all(&line);
            }
        }
    }
}

fn make_writer() -> LineWriter {
    LineWriter(Vec::with_capacity(160))
}

pub fn init(format: LogFormat, verbose: u8) {
    let (tx, rx) = sync_channel(QUEUE_LINES);
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || writer_thread(rx));
    if spawned.is_ok() {
        let _ = QUEUE.set(tx);
    }
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Under systemd (journald reads stderr) the journal stamps each line itself.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !journal)
        .with_writer(make_writer);
    match format {
        LogFormat::Human if journal => builder.without_time().init(),
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Waits (at most 1 s: stderr may be stalled) for queued lines to be written.
pub fn flush() {
    let Some(q) = QUEUE.get() else { return };
    let (ack, wait) = sync_channel(1);
    if q.try_send(Msg::Flush(ack)).is_ok() {
        let _ = wait.recv_timeout(Duration::from_secs(1));
    }
}

/// Writes `text` to stderr after what is queued, waiting at most 1 s: a closed or
/// stalled stderr must neither change the exit status nor hold the process.
pub fn eprint(text: &str) {
    match QUEUE.get() {
        Some(q) => {
            if q.try_send(Msg::Line(text.as_bytes().to_vec())).is_err() {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            flush();
        }
        None => {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}

/// Writes `text` to stdout, ignoring errors (a closed stdout must not panic).
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}
