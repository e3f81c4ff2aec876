//! Helper programs the supervisor runs (yt-dlp, pip): each in its own process group
//! (Windows: its own console process group), so a terminal's Ctrl-C or a signal to the
//! worker's group reaches only the supervisor, which decides what happens to the job
//! (`server::stopping`). Because they no longer die with the group, the supervisor kills
//! them itself on every way out:
//! - a helper whose future is dropped (cancelled, timed out, stalled) has its whole group
//!   killed (yt-dlp starts deno and ffmpeg);
//! - [`kill_all`] kills every helper still running (`signals::exit_now`, a second Ctrl-C);
//! - Linux: PR_SET_PDEATHSIG, so a helper dies with a supervisor killed outright;
//!   Windows: the Job Object (`os::contain_children`) holds them too. macOS has neither:
//!   a supervisor killed with SIGKILL leaves a running download to finish on its own.

use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::sync::Mutex;

/// Process group ids of helpers running now.
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `cmd` as a helper and collects its output (stdin closed). Dropping the future
/// before it completes kills the helper and everything it started.
pub async fn output(mut cmd: tokio::process::Command) -> std::io::Result<Output> {
    isolate(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    let mut guard = Running(child.id());
    if let Some(pid) = guard.0 {
        live().insert(pid);
    }
    let out = child.wait_with_output().await;
    // Reaped: its pid may be reused from now on, so the group is not signalled again.
    guard.forget();
    out
}

/// A helper not yet reaped: its group is killed when this drops.
struct Running(Option<u32>);

impl Running {
    fn forget(&mut self) {
        if let Some(pid) = self.0.take() {
            live().remove(&pid);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            live().remove(&pid);
            kill_group(pid);
        }
    }
}

/// Kills every helper still running (exit paths that skip destructors).
pub fn kill_all() {
    let pids: BTreeSet<u32> = std::mem::take(&mut *live());
    for pid in pids {
        kill_group(pid);
    }
}

#[cfg(unix)]
fn isolate(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and makes only
        // async-signal-safe system calls (prctl, getppid); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                // The supervisor may have died between fork and the prctl.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::other("the supervisor is gone"));
                }
                Ok(())
            });
        }
    }
}

#[cfg(windows)]
fn isolate(cmd: &mut tokio::process::Command) {
    /// `CREATE_NEW_PROCESS_GROUP` (winbase.h): the console's Ctrl-C is not delivered to it.
    const CREATE_NEW_PROCESS_GROUP: u32 = 0x0000_0200;
    cmd.creation_flags(CREATE_NEW_PROCESS_GROUP);
}

#[cfg(not(any(unix, windows)))]
fn isolate(_cmd: &mut tokio::process::Command) {}

#[cfg(unix)]
fn kill_group(pid: u32) {
    use nix::sys::signal::{killpg, Signal};
    if let Ok(raw) = i32::try_from(pid) {
        // The helper leads its own group (process_group(0)), so its pid is the group's id.
        let _ = killpg(nix::unistd::Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// Windows: `kill_on_drop` ends the helper itself; what it started ends with the Job
/// Object at the supervisor's exit.
#[cfg(not(unix))]
fn kill_group(_pid: u32) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Running (a zombie waiting for its reaper counts as gone).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            == Some(false)
    }

    /// A helper's own group: a signal to ours does not reach it, and dropping its future
    /// kills it and what it started.
    #[tokio::test]
    async fn a_helper_has_its_own_group_and_dies_with_its_future() {
        let dir = std::env::temp_dir().join(format!("helper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pids = dir.join("pids");
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "sleep 600 & echo $$ $! > '{}'; wait",
            pids.display()
        ));
        let run = tokio::spawn(output(cmd));
        let mut got = None;
        for _ in 0..500 {
            if let Some(t) = std::fs::read_to_string(&pids)
                .ok()
                .filter(|t| t.ends_with('\n'))
            {
                got = Some(t);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = got.expect("the helper never started");
        let ids: Vec<i32> = text
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        let (sh, sleep) = (ids[0], ids[1]);
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(sh))).unwrap();
        assert_eq!(pgid.as_raw(), sh, "the helper leads its own group");
        assert_ne!(
            pgid,
            nix::unistd::getpgrp(),
            "not in the supervisor's group"
        );
        assert!(live().contains(&(sh as u32)), "not registered");
        run.abort();
        let _ = run.await;
        assert!(!live().contains(&(sh as u32)), "still registered");
        let mut gone = false;
        for _ in 0..500 {
            // The sleep is reparented and reaped by init once killed.
            if !alive(sleep) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "the helper's own child outlived its cancelled future");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
