//! One child process: spawn it (the same executable, hidden `__child` mode), accept its
//! connection on a private local socket, and turn everything it does into [`Event`]s:
//! frames, end of stream, exit. The pool talks back through [`Handle`].

use std::path::{Path, PathBuf};
use std::process::Stdio;

use chaarfm_child::Device;
use chaarfm_shared::ipc::{self, FromChild, ToChild};
use interprocess::local_socket::tokio::{prelude::*, Stream};
use interprocess::local_socket::ListenerOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::policy::Ending;

/// What a child needs to know to start.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpec {
    pub device: Device,
    pub threads: usize,
    pub batch: usize,
}

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
#[derive(Debug)]
pub struct Handle {
    pub pid: u32,
    to_child: mpsc::UnboundedSender<ToChild>,
    kill: mpsc::UnboundedSender<()>,
}

impl Handle {
    /// Queues a frame; a dead child's frames are dropped (its exit event is on its way).
    pub fn send(&self, msg: ToChild) {
        let _ = self.to_child.send(msg);
    }

    /// Asks for SIGKILL (TerminateProcess on Windows).
    pub fn kill(&self) {
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

/// Starts a child and the tasks that watch it.
pub fn launch(
    exe: &Path,
    model: &Path,
    socket_dir: &Path,
    spec: &ChildSpec,
    tag: Tag,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<Handle> {
    let socket = socket_for(socket_dir, tag);
    let _ = std::fs::remove_file(&socket);
    let listener = ListenerOptions::new()
        .name(chaarfm_child::serve::socket_name(&socket)?)
        .create_tokio()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("__child")
        .arg("--socket")
        .arg(&socket)
        .arg("--parent-pid")
        .arg(std::process::id().to_string())
        .arg("--model")
        .arg(model)
        .arg("--device")
        .arg(spec.device.to_string())
        .arg("--threads")
        .arg(spec.threads.to_string())
        .arg("--batch")
        .arg(spec.batch.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // Its own process group: a terminal's Ctrl-C reaches only the supervisor, which then
    // drains; children are stopped by the supervisor (or by PDEATHSIG if it dies).
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let (to_child, mut to_child_rx) = mpsc::unbounded_channel::<ToChild>();
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

async fn read_frames(conn: std::sync::Arc<Stream>, tag: Tag, events: mpsc::UnboundedSender<Event>) {
    let mut recv = &*conn;
    let why = loop {
        let mut prefix = [0u8; 4];
        if let Err(e) = recv.read_exact(&mut prefix).await {
            break format!("socket closed ({e})");
        }
        let len = match ipc::body_len(prefix) {
            Ok(n) => n,
            Err(e) => break e.to_string(),
        };
        let mut body = vec![0u8; len];
        if let Err(e) = recv.read_exact(&mut body).await {
            break format!("socket closed mid-frame ({e})");
        }
        match ipc::decode::<FromChild>(&body) {
            Ok(msg) => {
                if events.send(Event::Frame(tag, msg)).is_err() {
                    return;
                }
            }
            Err(e) => break e.to_string(),
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
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return Ending::Signal(sig);
        }
    }
    Ending::Unknown
}
