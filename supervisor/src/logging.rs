//! tracing on stderr: human by default, JSON with `--log-format json`; ANSI colours only
//! when stderr is a terminal; under systemd (`JOURNAL_STREAM`) neither colours nor
//! timestamps, which the journal adds. `--log-file PATH` writes to PATH instead, a new
//! file each day (UTC): the day's file is renamed `PATH.YYYY-MM-DD`, the last
//! [`KEEP_DAYS`] are kept (`DailyFile`).
//!
//! The supervisor's one runtime thread must never block or die on its log: lines go
//! through a bounded queue to a writer thread, and when the queue is full (whoever reads
//! stderr stalled) or stderr is gone (EPIPE) lines are dropped and counted, never waited
//! for. The count is reported at exit ([`dropped`]).

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Lines held for a slow reader before dropping starts (~1 MB at ~140 B a line).
const QUEUE_LINES: usize = 8192;
/// Rotated log files kept beside the current one.
pub const KEEP_DAYS: usize = 7;

static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUE: OnceLock<SyncSender<Msg>> = OnceLock::new();

enum Msg {
    Line(Vec<u8>),
    /// A message a person at the terminal must see too (`eprint`), even with a log file.
    Direct(Vec<u8>),
    Flush(SyncSender<()>),
}

/// A log file that starts afresh each day (UTC): at the first line of a new day the
/// current file becomes `PATH.YYYY-MM-DD` (its day) and old ones beyond `keep` go.
pub struct DailyFile {
    path: PathBuf,
    file: File,
    /// The day the current file's lines belong to.
    day: i64,
    keep: usize,
}

impl DailyFile {
    /// Opens `path` for appending; a file left from an earlier day is rotated first.
    pub fn open(path: &Path, keep: usize) -> std::io::Result<DailyFile> {
        let day = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(crate::date::day_of)
            .unwrap_or_else(|_| crate::date::today());
        let mut f = DailyFile {
            path: path.to_path_buf(),
            file: Self::append(path)?,
            day,
            keep,
        };
        f.roll_to(crate::date::today())?;
        Ok(f)
    }

    fn append(path: &Path) -> std::io::Result<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }

    /// Writes `line`, as of `today`.
    pub fn write_line(&mut self, line: &[u8], today: i64) -> std::io::Result<()> {
        self.roll_to(today)?;
        self.file.write_all(line)
    }

    fn roll_to(&mut self, today: i64) -> std::io::Result<()> {
        if today == self.day {
            return Ok(());
        }
        let rotated = self.rotated_name(self.day);
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > 0) {
            std::fs::rename(&self.path, &rotated)?;
        }
        self.file = Self::append(&self.path)?;
        self.day = today;
        self.prune();
        Ok(())
    }

    fn rotated_name(&self, day: i64) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{}", crate::date::iso(day)));
        PathBuf::from(name)
    }

    /// Removes rotated files beyond the newest `keep` (their names sort by date).
    fn prune(&self) {
        let (Some(dir), Some(base)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{}.", base.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut rotated: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .is_some_and(|d| d.len() == 10 && d.as_bytes()[4] == b'-')
            })
            .map(|e| e.path())
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.keep);
        for p in &rotated[..excess] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Where the writer thread puts lines.
enum Sink {
    Stderr(std::io::Stderr),
    File(DailyFile),
}

impl Sink {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stderr(e) => e.write_all(line),
            Sink::File(f) => f.write_line(line, crate::date::today()),
        }
    }

    fn flush(&mut self) {
        match self {
            Sink::Stderr(e) => {
                let _ = e.flush();
            }
            Sink::File(f) => {
                let _ = f.file.flush();
            }
        }
    }
}

/// Log lines dropped so far because stderr was not being read (or was closed).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes queued lines to the sink; on a write error (EPIPE, a full disk...) drops the
/// rest silently, counted.
fn writer_thread(rx: Receiver<Msg>, mut sink: Sink) {
    let mut broken = false;
    let to_file = matches!(sink, Sink::File(_));
    for msg in rx {
        match msg {
            Msg::Line(l) if broken => {
                let _ = l;
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            Msg::Line(l) => {
                if sink.write_line(&l).is_err() {
                    broken = true;
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            Msg::Direct(l) => {
                if to_file {
                    let _ = std::io::stderr().write_all(&l);
                }
                if !broken && sink.write_line(&l).is_err() {
                    broken = true;
                }
            }
            Msg::Flush(ack) => {
                sink.flush();
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

/// Starts logging; with `log_file`, into that file (an error if it cannot be opened).
pub fn init(format: LogFormat, verbose: u8, log_file: Option<&Path>) -> std::io::Result<()> {
    let sink = match log_file {
        Some(p) => Sink::File(DailyFile::open(p, KEEP_DAYS).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", p.display()),
            )
        })?),
        None => Sink::Stderr(std::io::stderr()),
    };
    let (tx, rx) = sync_channel(QUEUE_LINES);
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || writer_thread(rx, sink));
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
        .with_ansi(std::io::stderr().is_terminal() && !journal && log_file.is_none())
        .with_writer(make_writer);
    match format {
        LogFormat::Human if journal && log_file.is_none() => builder.without_time().init(),
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Waits (at most 1 s: stderr may be stalled) for queued lines to be written.
pub fn flush() {
    let Some(q) = QUEUE.get() else { return };
    let (ack, wait) = sync_channel(1);
    if q.try_send(Msg::Flush(ack)).is_ok() {
        let _ = wait.recv_timeout(Duration::from_secs(1));
    }
}

/// Writes `text` to stderr (and the log file, if any) after what is queued, waiting at
/// most 1 s: a closed or stalled stderr must neither change the exit status nor hold
/// the process.
pub fn eprint(text: &str) {
    match QUEUE.get() {
        Some(q) => {
            if q.try_send(Msg::Direct(text.as_bytes().to_vec())).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_day_renames_the_file_and_old_days_are_pruned() {
        let dir = std::env::temp_dir().join(format!("daily-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.log");
        let mut f = DailyFile::open(&path, 2).unwrap();
        let day = f.day;
        f.write_line(b"first day\n", day).unwrap();
        f.write_line(b"second day\n", day + 1).unwrap();
        f.write_line(b"third day\n", day + 2).unwrap();
        f.write_line(b"fourth day\n", day + 3).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "fourth day\n");
        let name = |d: i64| dir.join(format!("worker.log.{}", crate::date::iso(d)));
        assert!(!name(day).exists(), "pruned: only the newest 2 are kept");
        assert_eq!(read(&name(day + 1)), "second day\n");
        assert_eq!(read(&name(day + 2)), "third day\n");
        // Reopened the same day: appends.
        drop(f);
        let mut g = DailyFile::open(&path, 2).unwrap();
        g.write_line(b"more\n", crate::date::today()).unwrap();
        assert!(read(&path).ends_with("more\n"));
        // Closed first: Windows removes no directory holding an open file.
        drop(g);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
