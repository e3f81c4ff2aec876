//! Windows: directories inherit the user profile's ACLs; liveness through sysinfo; a
//! Job Object so that no child outlives the supervisor (there is no PDEATHSIG).

pub fn private_mode(_b: &mut std::fs::DirBuilder) {}

/// Windows: a file under the user's profile is private by its ACL; nothing to check.
pub fn check_private_mode(_meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

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

/// How many processes share this process's console: 0 without one, 1 when the console
/// was made for this process alone (a double-click in Explorer).
pub fn console_processes() -> u32 {
    use windows_sys::Win32::System::Console::GetConsoleProcessList;
    let mut ids = [0u32; 4];
    // SAFETY: `ids` is a writable buffer of exactly the length passed.
    unsafe { GetConsoleProcessList(ids.as_mut_ptr(), ids.len() as u32) }
}

/// Bytes free for this user on the volume holding `dir`.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
    let wide: Vec<u16> = dir.as_os_str().encode_wide().chain(Some(0)).collect();
    let mut free: u64 = 0;
    // SAFETY: `wide` is NUL-terminated; the out pointer is a live u64, the others null.
    let ok = unsafe {
        GetDiskFreeSpaceExW(
            wide.as_ptr(),
            &mut free,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then_some(free)
}

/// `GetSystemPowerStatus`: on AC (unknown counts as AC), and the charge when known;
/// `None` without a system battery.
pub fn system_power() -> Option<(bool, Option<u8>)> {
    use windows_sys::Win32::System::Power::{GetSystemPowerStatus, SYSTEM_POWER_STATUS};
    // SAFETY: SYSTEM_POWER_STATUS is plain data; the call fills the struct we own.
    let mut st: SYSTEM_POWER_STATUS = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to that struct.
    if unsafe { GetSystemPowerStatus(&mut st) } == 0 || st.BatteryFlag == 128 {
        return None;
    }
    let pct = (st.BatteryLifePercent <= 100).then_some(st.BatteryLifePercent);
    Some((st.ACLineStatus != 0, pct))
}

/// Puts this process in a job that kills every process in it when its last handle
/// closes, which is when the supervisor exits or dies. Children (and yt-dlp) are created
/// inside it, so none outlives the supervisor; nextest contains its tests the same way.
pub fn contain_children() -> std::io::Result<()> {
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };
    use windows_sys::Win32::System::Threading::GetCurrentProcess;
    // SAFETY: null attributes and name create an anonymous job; the handle is checked.
    let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if job.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a plain C struct of integers, for which all-zero is a valid value.
    let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    // SAFETY: `info` is a valid JOBOBJECT_EXTENDED_LIMIT_INFORMATION of the size given,
    // and `job` a job handle we own.
    let ok = unsafe {
        SetInformationJobObject(
            job,
            JobObjectExtendedLimitInformation,
            std::ptr::from_ref(&info).cast(),
            std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        )
    };
    if ok == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `job` is ours; the current-process pseudo-handle is always valid.
    if unsafe { AssignProcessToJobObject(job, GetCurrentProcess()) } == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The job handle is never closed: the system closes it when this process ends, and
    // the job then kills whatever is left in it.
    Ok(())
}

/// Children get no console: console Ctrl-C and Ctrl-Break reach only the supervisor,
/// which drains and stops them (the Unix process group's role).
pub fn detach(cmd: &mut tokio::process::Command) {
    /// `DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP` (winbase.h).
    const FLAGS: u32 = 0x0000_0008 | 0x0000_0200;
    cmd.creation_flags(FLAGS);
}
