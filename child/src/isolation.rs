//! What a child does to itself before serving (Unix): die with the supervisor, never dump
//! core, never gain privileges. Done in the child after exec, so the supervisor needs no
//! `unsafe` pre-exec hook.
//!
//! The child's platform module: its `cfg`s are the hardening each platform offers.

/// Hardens the current process as a child of `parent_pid`. Returns an error message when
/// the parent is already gone (the child must then exit).
#[cfg(unix)]
pub fn harden(parent_pid: u32) -> Result<(), String> {
    use nix::sys::resource::{setrlimit, Resource};

    // No core dumps: a crashing decoder must not fill the disk overnight.
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::sys::prctl;
        use nix::sys::signal::Signal;
        // SIGKILL when the supervisor dies, so no child outlives it.
        prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        if let Err(e) = prctl::set_no_new_privs() {
            tracing::warn!(error = %e, "cannot set no_new_privs");
        }
    }
    // The supervisor may have died between fork and the prctl above.
    if nix::unistd::getppid().as_raw() as u32 != parent_pid {
        return Err(format!("supervisor (pid {parent_pid}) is gone"));
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn harden(_parent_pid: u32) -> Result<(), String> {
    Ok(())
}

/// Lowers this process's CPU priority to niceness `nice` (0 leaves it as is) and returns
/// the niceness it runs at. The children do the heavy work: on an idle machine they still
/// get every free cycle, and a desktop left running overnight stays responsive (BOINC's
/// choice too). Never raises priority: a process already nicer keeps its own. Call it
/// before starting threads (on Linux niceness is per thread, inherited by new ones).
#[cfg(unix)]
pub fn lower_priority(nice: i32) -> Result<i32, String> {
    use nix::errno::Errno;
    use nix::libc;
    Errno::clear();
    // SAFETY: getpriority only reads the calling process's niceness; no pointers.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if current == -1 && Errno::last_raw() != 0 {
        return Err(format!("getpriority: {}", Errno::last()));
    }
    if current >= nice {
        return Ok(current);
    }
    // SAFETY: setpriority only changes the calling process's niceness; no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(format!("setpriority({nice}): {}", Errno::last()));
    }
    Ok(nice)
}

#[cfg(not(unix))]
pub fn lower_priority(_nice: i32) -> Result<i32, String> {
    Ok(0)
}

/// Peak resident memory of this process in KiB (0 where the platform does not say).
/// On Linux from `VmHWM`, which starts afresh at exec; `ru_maxrss` would carry over the
/// peak of the process that forked us.
pub fn peak_rss_kib() -> u64 {
    #[cfg(target_os = "linux")]
    if let Some(kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
    {
        return kib;
    }
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrusage, UsageWho};
        match getrusage(UsageWho::RUSAGE_SELF) {
            // Linux reports KiB, macOS bytes.
            Ok(u) if cfg!(target_os = "macos") => u.max_rss() as u64 / 1024,
            Ok(u) => u.max_rss() as u64,
            Err(_) => 0,
        }
    }
    #[cfg(not(unix))]
    {
        0
    }
}

#[cfg(all(test, unix))]
mod tests {
    #[test]
    fn priority_is_lowered_and_never_raised() {
        // Run in a thread of its own: on Linux niceness is per thread, so the test
        // harness's other threads are left alone.
        std::thread::spawn(|| {
            assert_eq!(
                super::lower_priority(0),
                Ok(super::lower_priority(0).unwrap())
            );
            let start = super::lower_priority(0).unwrap();
            let want = (start + 3).min(19);
            assert_eq!(super::lower_priority(want), Ok(want));
            // Asking for less than it has leaves it nicer.
            assert_eq!(super::lower_priority(want - 2), Ok(want));
        })
        .join()
        .unwrap();
    }
}
