//! How `chaarfm-super status` asks the running worker: a local socket in its runtime
//! dir (a named pipe on Windows), found through `<state_dir>/control`, which holds the
//! socket's name while the worker runs. Each connection gets one line: the report as
//! JSON. Nothing is read from the client, so there is nothing to parse or refuse.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use interprocess::local_socket::tokio::{prelude::*, Listener, Stream};
use interprocess::local_socket::ListenerOptions;
use tokio::io::AsyncWriteExt;

use super::ctx::Ctx;
use super::hub::Hub;
use super::report;

/// The pointer file in the state dir.
pub fn pointer(state_dir: &Path) -> PathBuf {
    state_dir.join("control")
}

/// The socket's name for this process.
fn name(runtime_dir: &Path) -> String {
    if cfg!(unix) {
        runtime_dir.join("control.sock").display().to_string()
    } else {
        format!("chaarfm-super-{}-control", std::process::id())
    }
}

/// Removes the pointer when the worker stops.
pub struct Published(PathBuf);

impl Drop for Published {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Listens, and writes the pointer; the caller spawns [`serve`] with the listener.
pub fn listen(state_dir: &Path, runtime_dir: &Path) -> std::io::Result<(Listener, Published)> {
    let name = name(runtime_dir);
    if cfg!(unix) {
        let _ = std::fs::remove_file(&name);
    }
    let listener = ListenerOptions::new()
        .name(chaarfm_child::serve::socket_name(&name)?)
        .create_tokio()?;
    let ptr = pointer(state_dir);
    std::fs::write(&ptr, &name)?;
    Ok((listener, Published(ptr)))
}

/// Answers each connection with the report, until the task is dropped.
pub async fn serve(listener: Listener, ctx: Arc<Ctx>, hub: Hub) {
    loop {
        let Ok(mut conn) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (ctx, hub) = (Arc::clone(&ctx), hub.clone());
        tokio::spawn(async move {
            let r = report::build(&ctx, &hub).await;
            let Ok(mut line) = serde_json::to_string(&r) else {
                return;
            };
            line.push('\n');
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                let _ = conn.write_all(line.as_bytes()).await;
                let _ = conn.flush().await;
            })
            .await;
        });
    }
}

/// Why `status` got no report.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no worker is running with the state dir {0} (no {1})")]
    NotRunning(PathBuf, PathBuf),
    #[error("no worker is running with the state dir {0} (it left {1}, but nothing answers)")]
    Gone(PathBuf, PathBuf),
    #[error("the worker's control socket {0} refuses this user: {1} (a system service's answers root: run this with sudo)")]
    Denied(String, std::io::Error),
    #[error("the worker sent no report: {0}")]
    Bad(String),
}

/// Asks the worker of `state_dir` for its report.
pub async fn ask(state_dir: &Path) -> Result<report::Report, AskError> {
    use tokio::io::AsyncReadExt;
    let ptr = pointer(state_dir);
    let name = std::fs::read_to_string(&ptr)
        .map_err(|_| AskError::NotRunning(state_dir.to_path_buf(), ptr.clone()))?;
    let name = name.trim().to_string();
    let sock_name =
        chaarfm_child::serve::socket_name(&name).map_err(|e| AskError::Bad(e.to_string()))?;
    let mut conn = match Stream::connect(sock_name).await {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(AskError::Denied(name, e))
        }
        Err(_) => return Err(AskError::Gone(state_dir.to_path_buf(), ptr)),
    };
    let mut text = String::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_string(&mut text),
    )
    .await;
    match read {
        Ok(Ok(_)) => serde_json::from_str(text.trim()).map_err(|e| AskError::Bad(e.to_string())),
        Ok(Err(e)) => Err(AskError::Bad(e.to_string())),
        Err(_) => Err(AskError::Bad("no answer within 10 s".into())),
    }
}
