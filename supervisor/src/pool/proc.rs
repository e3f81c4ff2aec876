//! One child process: spawn it (the same executable, hidden `__child` mode), accept its
//! connection on a private local socket, and turn everything it does into [`Event`]s:
//! frames, end of stream, exit. The pool talks back through [`Handle`].

use std::path::{Path, PathBuf};
use std::process::Stdio;

use chaarfm_shared::ipc::{self, FromChild, ToChild};
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::ListenerOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::policy::Ending;

/// What a child needs to know to start (sent as its first frame, `ToChild::Start`).
pub use chaarfm_shared::ipc::ChildSpec;

/// Identifies one incarnation of one slot: a respawned child gets a new generation, so
/// late events from its predecessor are recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub slot: usize,
    pub gen: u64,
}

#[derive(Debug)]
pub enum Event {
    Frame(Tag, FromChild),
    /// The socket closed (or carried garbage); the exit follows.
    Eof(Tag, String),
    Exited(Tag, Ending),
}

/// The pool's side of a running child.
pub trait Control: Send {
    fn pid(&self) -> u32;
    /// Queues a frame; a dead child's frames are dropped (its exit event is on its way).
    fn send(&self, msg: ToChild);
    /// Asks for SIGKILL (TerminateProcess on Windows); the exit event follows.
    fn kill(&self);
}

/// Starts children. The real one ([`ProcSpawner`]) runs processes; the pool's unit tests
/// use a fake, so the state machine is tested without processes or wall clock.
pub trait Spawner: Send {
    /// Starts child `tag` and the tasks that turn what it does into [`Event`]s.
    fn spawn(
        &mut self,
        spec: &ChildSpec,
        tag: Tag,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Box<dyn Control>, SpawnError>;
    /// Resident memory of these processes, in MB (missing ones are left out).
    fn rss_mb(&mut self, pids: &[u32]) -> Vec<(u32, u64)>;
}

/// Why a child could not be started; each names its own cause.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on the child socket {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the child process {exe}: {source}")]
    Exec {
        exe: PathBuf,
        source: std::io::Error,
    },
}

impl SpawnError {
    /// EAGAIN / ENOMEM: the machine is short of processes or memory right now; fewer
    /// children for a while, not a stop.
    pub fn is_resource_shortage(&self) -> bool {
        let e = match self {
            SpawnError::Exec { source, .. } | SpawnError::Listen { source, .. } => source,
            SpawnError::RuntimeDir { .. } => return false,
        };
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::OutOfMemory
        ) || matches!(e.raw_os_error(), Some(11 | 12))
    }
}

/// Real children: the same executable in hidden `__child` mode, one local socket each in
/// the runtime directory (recreated if something removed it).
pub struct ProcSpawner {
    pub exe: PathBuf,
    pub model: PathBuf,
    pub runtime_dir: PathBuf,
}

impl ProcSpawner {
    pub fn new(exe: PathBuf, model: PathBuf, runtime_dir: PathBuf) -> Self {
        Self {
            exe,
            model,
            runtime_dir,
        }
    }
}

impl Spawner for ProcSpawner {
    fn spawn(
        &mut self,
        spec: &ChildSpec,
        tag: Tag,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Box<dyn Control>, SpawnError> {
        crate::os::ensure_private_dir(&self.runtime_dir).map_err(|source| {
            SpawnError::RuntimeDir {
                path: self.runtime_dir.clone(),
                source,
            }
        })?;
        let h = launch(&self.exe, &self.model, &self.runtime_dir, spec, tag, events)?;
        Ok(Box::new(h))
    }

    fn rss_mb(&mut self, pids: &[u32]) -> Vec<(u32, u64)> {
        crate::os::usage::rss_mb(pids)
    }
}

/// A running child process.
#[derive(Debug)]
struct Handle {
    pid: u32,
    to_child: mpsc::UnboundedSender<ToChild>,
    kill: mpsc::UnboundedSender<()>,
}

impl Control for Handle {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn send(&self, msg: ToChild) {
        let _ = self.to_child.send(msg);
    }

    fn kill(&self) {
        let _ = self.kill.send(());
    }
}

/// Socket path (Unix) or pipe name (Windows) for one child.
fn socket_for(dir: &Path, tag: Tag) -> String {
    if cfg!(unix) {
        dir.join(format!("c{}-{}.sock", tag.slot, tag.gen))
            .display()
            .to_string()
    } else {
        format!(
            "chaarfm-super-{}-c{}-{}",
            std::process::id(),
            tag.slot,
            tag.gen
        )
    }
}

/// The child's command line: the hidden mode and its socket; everything else comes in
/// its first frame ([`start_frame`]). Parsed by the child's clap definition
/// (`cli::ChildArgs`); `tests` check the round trip.
pub fn child_args(socket: &str) -> Vec<std::ffi::OsString> {
    vec!["__child".into(), "--socket".into(), socket.into()]
}

/// A child's first frame: how it runs, which model, who its parent is.
pub fn start_frame(spec: &ChildSpec, model: &Path) -> ToChild {
    ToChild::Start(ipc::Start {
        spec: spec.clone(),
        model: ipc::WirePath::from_path(model),
        parent_pid: std::process::id(),
    })
}

/// Starts a child and the tasks that watch it.
fn launch(
    exe: &Path,
    model: &Path,
    socket_dir: &Path,
    spec: &ChildSpec,
    tag: Tag,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Handle, SpawnError> {
    let socket = socket_for(socket_dir, tag);
    let _ = std::fs::remove_file(&socket);
    let listen_err = |source| SpawnError::Listen {
        path: socket.clone(),
        source,
    };
    let listener = ListenerOptions::new()
        .name(chaarfm_child::serve::socket_name(&socket).map_err(listen_err)?)
        .create_tokio()
        .map_err(listen_err)?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(child_args(&socket))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Piped through the supervisor's own (non-blocking) log, prefixed with the slot.
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::os::detach(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
        exe: exe.to_path_buf(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    if let Some(err) = child.stderr.take() {
        tokio::spawn(relay_stderr(err, tag));
    }
    let (to_child, mut to_child_rx) = mpsc::unbounded_channel::<ToChild>();
    // Queued first, so it is the first frame written once the child connects.
    let _ = to_child.send(start_frame(spec, model));
    let (kill, mut kill_rx) = mpsc::unbounded_channel::<()>();

    tokio::spawn(async move {
        let socket_path = PathBuf::from(&socket);
        // Until it connects: the connection, its exit, or a kill.
        let conn = loop {
            tokio::select! {
                conn = listener.accept() => match conn {
                    Ok(c) => break Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a child's connection failed");
                        let _ = child.start_kill();
                    }
                },
                status = child.wait() => {
                    let _ = events.send(Event::Exited(tag, ending(status)));
                    break None;
                }
                Some(()) = kill_rx.recv() => { let _ = child.start_kill(); }
            }
        };
        drop(listener);
        if cfg!(unix) {
            let _ = std::fs::remove_file(&socket_path);
        }
        let Some(conn) = conn else { return };
        // `&Stream` reads and writes; one task does each.
        let conn = std::sync::Arc::new(conn);
        tokio::spawn(read_frames(
            std::sync::Arc::clone(&conn),
            tag,
            events.clone(),
        ));
        tokio::spawn(async move {
            let mut send = &*conn;
            while let Some(msg) = to_child_rx.recv().await {
                let Ok(frame) = ipc::encode(&msg) else { break };
                if send.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        loop {
            tokio::select! {
                status = child.wait() => {
                    let _ = events.send(Event::Exited(tag, ending(status)));
                    return;
                }
                Some(()) = kill_rx.recv() => { let _ = child.start_kill(); }
            }
        }
    });
    Ok(Handle {
        pid,
        to_child,
        kill,
    })
}

/// A child's stderr, line by line, into the supervisor's log with its slot; at most
/// [`RELAY_BURST`] lines per second, the rest counted and reported.
async fn relay_stderr(err: tokio::process::ChildStderr, tag: Tag) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(err).lines();
    let mut window = tokio::time::Instant::now();
    let (mut shown, mut dropped) = (0u32, 0u64);
    while let Ok(Some(line)) = lines.next_line().await {
        if window.elapsed() >= std::time::Duration::from_secs(1) {
            if dropped > 0 {
                tracing::warn!(
                    slot = tag.slot,
                    dropped,
                    "child log lines dropped (too many)"
                );
            }
            window = tokio::time::Instant::now();
            (shown, dropped) = (0, 0);
        }
        if shown >= RELAY_BURST {
            dropped += 1;
            continue;
        }
        shown += 1;
        let line: String = line.chars().take(500).collect();
        tracing::info!(slot = tag.slot, "child: {line}");
    }
}

/// Lines per second a child may put in the supervisor's log.
const RELAY_BURST: u32 = 20;

async fn read_frames(conn: std::sync::Arc<Stream>, tag: Tag, events: mpsc::UnboundedSender<Event>) {
    let mut recv = &*conn;
    let mut frames = ipc::FrameReader::default();
    let mut chunk = vec![0u8; 4096];
    let why = loop {
        match frames.take::<FromChild>() {
            Ok(Some(msg)) => {
                if events.send(Event::Frame(tag, msg)).is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
        match recv.read(&mut chunk).await {
            Ok(0) if frames.is_empty() => break "socket closed".to_string(),
            Ok(0) => break "socket closed mid-frame".to_string(),
            Ok(n) => frames.feed(&chunk[..n]),
            Err(e) => break format!("socket closed ({e})"),
        }
    };
    let _ = events.send(Event::Eof(tag, why));
}

fn ending(status: std::io::Result<std::process::ExitStatus>) -> Ending {
    let Ok(status) = status else {
        return Ending::Unknown;
    };
    if let Some(code) = status.code() {
        return Ending::Exit(code);
    }
    // Platform code here by nature: only Unix exit statuses carry a signal.
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return Ending::Signal(sig);
        }
    }
    Ending::Unknown
}
