//! Windows: directories inherit the user profile's ACLs; liveness through sysinfo.

pub fn private_mode(_b: &mut std::fs::DirBuilder) {}

pub fn pid_alive(pid: u32) -> bool {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
    let mut sys = System::new();
    let p = Pid::from_u32(pid);
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[p]),
        true,
        ProcessRefreshKind::nothing(),
    );
    sys.process(p).is_some()
}

/// Not measured on Windows yet (`doctor` says "unknown").
pub fn free_bytes(_dir: &std::path::Path) -> Option<u64> {
    None
}
