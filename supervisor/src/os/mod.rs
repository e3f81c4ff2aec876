//! Platform code in one place (as nextest does): private directories, the runtime
//! directory for the children's sockets, whether a pid is alive, the state-dir lock.
//! Everything platform-specific sits in `unix` / `windows`; the rest is portable.

pub mod helper;
#[cfg(target_os = "macos")]
pub mod macos;
#[cfg(unix)]
mod unix;
pub mod usage;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `$XDG_STATE_HOME/chaarfm-super` or `~/.local/state/chaarfm-super` (macOS: Application
/// Support; Windows: %LOCALAPPDATA%).
pub fn default_state_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
    };
    let base = if cfg!(windows) {
        std::env::var_os("LOCALAPPDATA")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
    } else if cfg!(target_os = "macos") {
        home().join("Library/Application Support")
    } else {
        std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| home().join(".local/state"))
    };
    base.join("chaarfm-super")
}

/// Creates `dir` (and parents) if missing, readable only by this user (0700 on Unix).
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    imp::private_mode(&mut b);
    b.recursive(true).create(dir)
}

/// Removes `dir` if present and creates it afresh, private.
pub fn fresh_private_dir(dir: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    ensure_private_dir(dir)
}

/// A secret file (cookies): it must exist and, on Unix, be readable by this user only;
/// the error says what to do.
pub fn check_private_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it ({e})"))?;
    if !meta.is_file() {
        return Err("it is not a file".into());
    }
    imp::check_private_mode(&meta)
}

/// Free space for this user on the file system holding `dir`, when known.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    imp::free_bytes(dir)
}

/// Whether this process was started by a double-click (Windows Explorer): it is then
/// alone on a console made for it, which closes the moment it exits, taking every
/// message with it. Never on Unix.
pub fn started_from_explorer() -> bool {
    alone_on(imp::console_processes())
}

/// A console holding only this process was made for it.
fn alone_on(console_processes: u32) -> bool {
    console_processes == 1
}

/// Windows' power status: (on AC power, battery charge %), when it has a battery and
/// knows; `None` elsewhere (other systems are read by `prefs::power`).
pub fn system_power() -> Option<(bool, Option<u8>)> {
    imp::system_power()
}

/// Makes sure no child outlives the supervisor, where the children cannot see to it
/// themselves (Windows: a kill-on-close Job Object). Call before spawning anything.
pub fn contain_children() -> std::io::Result<()> {
    imp::contain_children()
}

/// Keeps the terminal's Ctrl-C from reaching a child directly: only the supervisor gets
/// it, and drains.
pub fn detach(cmd: &mut tokio::process::Command) {
    imp::detach(cmd)
}

/// Whether process `pid` exists (any user's).
pub fn pid_alive(pid: u32) -> bool {
    imp::pid_alive(pid)
}

/// Longest socket path we use: Unix socket addresses hold ~104-108 bytes.
const MAX_SOCKET_DIR: usize = 80;

/// The runtime directory of this process: `$XDG_RUNTIME_DIR/chaarfm-super/<pid>` (not
/// swept by /tmp cleaners), else `<base>/run/<pid>` where `base` is the state dir. A
/// path too long for a socket address falls back to the temp dir. Stale directories of
/// dead pids beside it are removed.
pub fn runtime_dir(state_dir: &Path) -> PathBuf {
    let pid = std::process::id().to_string();
    let parents = [
        std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|v| !v.is_empty())
            .map(|d| PathBuf::from(d).join("chaarfm-super")),
        Some(state_dir.join("run")),
        Some(std::env::temp_dir().join("chaarfm-super-run")),
    ];
    let parent = parents
        .into_iter()
        .flatten()
        .find(|p| p.join(&pid).as_os_str().len() <= MAX_SOCKET_DIR && ensure_private_dir(p).is_ok())
        .unwrap_or_else(std::env::temp_dir);
    sweep_stale(&parent);
    let dir = parent.join(pid);
    if let Ok(mut r) = REGISTERED.lock() {
        *r = Some(dir.clone());
    }
    dir
}

/// Removes `<parent>/<pid>` directories of processes that no longer exist.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

static REGISTERED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Removes this process's runtime directory; called on every exit path (normal return,
/// error, panic hook, second Ctrl-C).
pub fn remove_runtime_dir() {
    let dir = REGISTERED.lock().ok().and_then(|mut r| r.take());
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The lock that keeps one supervisor per state dir, held for the process's life.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// Why the state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another chaarfm-super{} is using the state dir {dir}: run one per state dir, or give this one its own --state-dir", .holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held { dir: PathBuf, holder: Option<u32> },
    #[error("cannot lock the state dir {dir}: {source} (check that it is writable, or pass another --state-dir)")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Locks `<dir>/lock` (std's advisory file lock) and writes our pid into it.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, LockError> {
    use std::io::{Read, Seek, Write};
    let io = |source| LockError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    ensure_private_dir(dir).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock"))
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                holder: s.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    // The pid is for the message a second supervisor prints; failing to write it is fine.
    let _ = f
        .set_len(0)
        .and_then(|_| f.rewind())
        .and_then(|_| write!(f, "{}", std::process::id()))
        .and_then(|_| f.flush());
    Ok(StateLock { _file: f })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The platform's answers are plausible (on Windows: GetDiskFreeSpaceExW and
    /// GetSystemPowerStatus, run under wine by the Windows suite).
    #[test]
    fn free_space_and_power_are_read() {
        assert!(free_bytes(&std::env::temp_dir()).is_some_and(|b| b > 0));
        if let Some((_, Some(pct))) = system_power() {
            assert!(pct <= 100, "{pct}");
        }
    }

    #[test]
    fn only_a_console_of_its_own_means_explorer_started_it() {
        assert!(alone_on(1));
        // No console (a service, a pipe), or a terminal shared with its shell.
        assert!(!alone_on(0));
        assert!(!alone_on(2));
        // The test harness runs with its output captured, never from Explorer.
        assert!(!started_from_explorer());
    }

    #[test]
    fn a_second_lock_on_one_state_dir_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("chaarfm-lock-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let held = lock_state_dir(&dir).unwrap();
        match lock_state_dir(&dir) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        drop(held);
        // Free again once the holder is gone. A child that another test of this process
        // forks shares the lock's descriptor until its exec closes it (O_CLOEXEC), so
        // the lock may outlive `drop` by that moment: poll, bounded.
        let mut again = lock_state_dir(&dir);
        for _ in 0..250 {
            if again.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            again = lock_state_dir(&dir);
        }
        again.expect("free again once the holder is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_runtime_dirs_of_dead_pids_are_swept() {
        let parent =
            std::env::temp_dir().join(format!("chaarfm-sweep-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        // pid_max on Linux is at most 2^22: this pid cannot exist.
        let dead = parent.join("4999999");
        let live = parent.join(std::process::id().to_string());
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        sweep_stale(&parent);
        assert!(!dead.exists());
        assert!(live.exists());
        let _ = std::fs::remove_dir_all(&parent);
    }
}
