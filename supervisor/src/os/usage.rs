//! The machine's memory and CPUs and a process's memory: sysinfo everywhere but macOS,
//! where sysinfo's code links IOKit and CoreFoundation, frameworks only Apple's SDK
//! has; there libSystem answers ([`super::macos`]), so zig links the macOS bundle on
//! Linux with nothing but libSystem.

/// Memory available to new processes, in MB (Linux: also within this cgroup's limit).
#[cfg(not(target_os = "macos"))]
pub fn available_mb() -> u64 {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::everything()),
    );
    let mut mb = sys.available_memory() / (1 << 20);
    if let Some(cg) = sys.cgroup_limits() {
        mb = mb.min(cg.free_memory / (1 << 20));
    }
    mb
}

#[cfg(target_os = "macos")]
pub fn available_mb() -> u64 {
    super::macos::available_bytes() / (1 << 20)
}

/// Logical CPUs of the machine (not only those this process may use).
#[cfg(not(target_os = "macos"))]
pub fn logical_cpus() -> usize {
    use sysinfo::{CpuRefreshKind, RefreshKind, System};
    System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()))
        .cpus()
        .len()
}

#[cfg(target_os = "macos")]
pub fn logical_cpus() -> usize {
    super::macos::logical_cpus()
}

/// Resident memory in MB of each of `pids` still running.
#[cfg(not(target_os = "macos"))]
pub fn rss_mb(pids: &[u32]) -> Vec<(u32, u64)> {
    use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate};
    let ids: Vec<Pid> = pids.iter().map(|&p| Pid::from_u32(p)).collect();
    // A fresh System each time: a long-lived one keeps every process it ever saw,
    // with its /proc/<pid>/stat open (on Linux), so each child that died leaked a
    // descriptor (found by the soak).
    let mut sys = sysinfo::System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&ids),
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    pids.iter()
        .filter_map(|&p| {
            sys.process(Pid::from_u32(p))
                .map(|pr| (p, pr.memory() / (1 << 20)))
        })
        .collect()
}

#[cfg(target_os = "macos")]
pub fn rss_mb(pids: &[u32]) -> Vec<(u32, u64)> {
    pids.iter()
        .filter_map(|&p| super::macos::task_info(p).map(|t| (p, t.pti_resident_size >> 20)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_cpus_memory_and_a_resident_test_process() {
        assert!(logical_cpus() >= 1);
        assert!(available_mb() > 0);
        let me = std::process::id();
        let rss = rss_mb(&[me]);
        assert_eq!(rss.len(), 1, "{rss:?}");
        // A test process holds its code and heap: more than 1 MB, less than 10 GB.
        assert!((1..10_000).contains(&rss[0].1), "{rss:?}");
        // A pid that cannot exist is left out.
        assert!(rss_mb(&[u32::MAX - 1]).is_empty());
    }
}
