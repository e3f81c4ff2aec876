//! What a child does to itself before serving (Unix): die with the supervisor, never dump
//! core, never gain privileges. Done in the child after exec, so the supervisor needs no
//! `unsafe` pre-exec hook.

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
