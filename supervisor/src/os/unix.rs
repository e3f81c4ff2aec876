//! Unix: 0700 directories, `kill(pid, 0)` for liveness, statvfs for free space.

pub fn private_mode(b: &mut std::fs::DirBuilder) {
    use std::os::unix::fs::DirBuilderExt;
    b.mode(0o700);
}

/// Group or others may read the file: refused, with the fix.
pub fn check_private_mode(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "its mode is {mode:o}, so other users can read it: chmod 600 it"
        ));
    }
    Ok(())
}

pub fn pid_alive(pid: u32) -> bool {
    use nix::errno::Errno;
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence only; EPERM means it exists but is someone else's.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e == Errno::EPERM,
    }
}

/// A terminal is never made for one program as Explorer's consoles are: 0, "none".
pub fn console_processes() -> u32 {
    0
}

pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    // The field types differ between Unixes (u32 on some): widen, whatever they are.
    #[allow(clippy::useless_conversion)]
    // Blocks available to an unprivileged user, in fragment-size units.
    Some(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// Read from sysfs or pmset instead (`prefs::power`).
pub fn system_power() -> Option<(bool, Option<u8>)> {
    None
}

/// Nothing to do: each child sets PR_SET_PDEATHSIG itself (`child::isolation::harden`).
pub fn contain_children() -> std::io::Result<()> {
    Ok(())
}

/// Its own process group: a terminal's Ctrl-C reaches only the supervisor, which then
/// drains; children are stopped by the supervisor (or by PDEATHSIG if it dies).
pub fn detach(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
}
