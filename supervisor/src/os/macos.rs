//! macOS: what sysinfo would read through IOKit and CoreFoundation, read from libSystem
//! instead (sysctl, Mach host statistics, libproc), so the program links without
//! Apple's SDK frameworks ([`super::usage`]).

use std::ffi::CStr;
use std::mem::{size_of, MaybeUninit};

#[repr(C)]
struct Timebase {
    numer: u32,
    denom: u32,
}

extern "C" {
    // Both in libSystem. libc declares mach_host_self deprecated (in favour of the mach2
    // crate) and has no plain mach_timebase_info struct.
    fn mach_host_self() -> libc::mach_port_t;
    fn mach_timebase_info(info: *mut Timebase) -> libc::c_int;
}

/// An integer sysctl (`hw.memsize` is 64-bit, `hw.logicalcpu` 32-bit).
fn sysctl_int(name: &CStr) -> Option<u64> {
    let mut buf = [0u8; 8];
    let mut len = buf.len();
    // SAFETY: `name` is NUL-terminated; `buf` and `len` are live, `len` is `buf`'s size.
    let r = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    match (r, len) {
        (0, 8) => Some(u64::from_ne_bytes(buf)),
        (0, 4) => Some(u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as u64),
        _ => None,
    }
}

pub fn logical_cpus() -> usize {
    sysctl_int(c"hw.logicalcpu")
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Memory not held by programs: all of it less active, wired and compressed pages (what
/// Activity Monitor calls "memory used"); free, inactive and purgeable pages count as
/// available, as the kernel hands them out on demand.
pub fn available_bytes() -> u64 {
    let total = sysctl_int(c"hw.memsize").unwrap_or(0);
    let page = sysctl_int(c"hw.pagesize").unwrap_or(4096);
    let mut stats = MaybeUninit::<libc::vm_statistics64>::zeroed();
    let mut count = libc::HOST_VM_INFO64_COUNT;
    // SAFETY: the kernel writes at most `count` integers, which is vm_statistics64's size.
    let kr = unsafe {
        libc::host_statistics64(
            mach_host_self(),
            libc::HOST_VM_INFO64,
            stats.as_mut_ptr().cast(),
            &mut count,
        )
    };
    if kr != libc::KERN_SUCCESS {
        return total;
    }
    // SAFETY: zeroed, then filled by the call that succeeded: plain integers.
    let s = unsafe { stats.assume_init() };
    let used = (s.active_count as u64 + s.wire_count as u64 + s.compressor_page_count as u64)
        .saturating_mul(page);
    total.saturating_sub(used)
}

/// libproc's task figures of `pid` (resident size in bytes, CPU time in Mach time
/// units); `None` if it is gone or not ours.
pub fn task_info(pid: u32) -> Option<libc::proc_taskinfo> {
    let pid = libc::c_int::try_from(pid).ok()?;
    let mut info = MaybeUninit::<libc::proc_taskinfo>::zeroed();
    let size = size_of::<libc::proc_taskinfo>() as libc::c_int;
    // SAFETY: proc_pidinfo writes at most `size` bytes, the struct's size.
    let n = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTASKINFO,
            0,
            info.as_mut_ptr().cast(),
            size,
        )
    };
    // SAFETY: a full-size answer filled the (zeroed, plain-integer) struct.
    (n == size).then(|| unsafe { info.assume_init() })
}

/// The whole machine's CPU ticks since boot, all cores together, by state (user,
/// system, idle, nice). 32-bit counters: they wrap after weeks, so compare two readings
/// with [`busy_share`].
pub fn machine_ticks() -> Option<[u32; 4]> {
    let mut info = MaybeUninit::<libc::host_cpu_load_info>::zeroed();
    let mut count = libc::HOST_CPU_LOAD_INFO_COUNT;
    // SAFETY: the kernel writes at most `count` integers, host_cpu_load_info's size.
    let kr = unsafe {
        libc::host_statistics(
            mach_host_self(),
            libc::HOST_CPU_LOAD_INFO,
            info.as_mut_ptr().cast(),
            &mut count,
        )
    };
    if kr != libc::KERN_SUCCESS {
        return None;
    }
    // SAFETY: zeroed, then filled by the call that succeeded: plain integers.
    let t = unsafe { info.assume_init() }.cpu_ticks;
    let at = |s: libc::c_int| t[s as usize];
    Some([
        at(libc::CPU_STATE_USER),
        at(libc::CPU_STATE_SYSTEM),
        at(libc::CPU_STATE_IDLE),
        at(libc::CPU_STATE_NICE),
    ])
}

/// % of the machine busy between two readings of [`machine_ticks`] (each counter's
/// difference taken modulo 2^32); `None` if no tick passed.
pub fn busy_share(before: [u32; 4], after: [u32; 4]) -> Option<f32> {
    let d: Vec<u64> = (0..4)
        .map(|i| after[i].wrapping_sub(before[i]) as u64)
        .collect();
    let total = d.iter().sum::<u64>();
    (total > 0).then(|| 100.0 * (d[0] + d[1] + d[3]) as f32 / total as f32)
}

/// CPU time in nanoseconds used so far by `root` and its descendants alive now.
pub fn tree_cpu_ns(root: u32) -> u64 {
    let mut tb = Timebase { numer: 1, denom: 1 };
    // SAFETY: a live struct of the layout mach_timebase_info fills.
    if unsafe { mach_timebase_info(&mut tb) } != 0 || tb.denom == 0 {
        tb = Timebase { numer: 1, denom: 1 };
    }
    let mut units: u128 = 0;
    let mut todo = vec![root];
    // Bounded: a process table read mid-change might hold a loop.
    let mut seen = 0;
    while let Some(pid) = todo.pop() {
        seen += 1;
        if seen > 4096 {
            break;
        }
        if let Some(t) = task_info(pid) {
            // Mach time units: nanoseconds on Intel, 125/3 ns on Apple Silicon.
            units += t.pti_total_user as u128 + t.pti_total_system as u128;
        }
        todo.extend(children(pid));
    }
    (units * tb.numer as u128 / tb.denom as u128) as u64
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(pid) = libc::c_int::try_from(pid) else {
        return Vec::new();
    };
    let mut buf = vec![0 as libc::c_int; 256];
    let bytes = (buf.len() * size_of::<libc::c_int>()) as libc::c_int;
    // SAFETY: `buf` has room for `bytes` bytes; the call returns how many pids it wrote.
    let n = unsafe { libc::proc_listchildpids(pid, buf.as_mut_ptr().cast(), bytes) };
    let n = usize::try_from(n).unwrap_or(0).min(buf.len());
    buf[..n]
        .iter()
        .filter_map(|&p| u32::try_from(p).ok().filter(|&p| p > 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_share_survives_a_counter_wrapping() {
        // 30 user + 10 system + 60 idle ticks, the user counter wrapping past 2^32.
        let before = [u32::MAX - 9, 100, 1_000, 5];
        let after = [20, 110, 1_060, 5];
        assert_eq!(busy_share(before, after), Some(40.0));
        assert_eq!(busy_share(after, after), None);
    }

    #[test]
    fn the_machine_and_this_process_are_read() {
        assert!(machine_ticks().is_some_and(|t| t.iter().any(|&n| n > 0)));
        assert!(tree_cpu_ns(std::process::id()) > 0);
        assert!(available_bytes() <= sysctl_int(c"hw.memsize").unwrap());
    }
}
