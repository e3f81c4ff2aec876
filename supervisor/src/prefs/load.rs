//! How much of the machine's CPU other programs use: the whole machine's use minus that
//! of this process tree (the supervisor, its children, yt-dlp), as BOINC's
//! `suspend_cpu_usage` counts only non-BOINC work.

use std::collections::HashMap;

/// Samples the CPU use of other programs; each sample covers the time since the last.
#[cfg(not(target_os = "macos"))]
pub struct Load {
    sys: sysinfo::System,
    me: u32,
}

#[cfg(not(target_os = "macos"))]
impl Load {
    pub fn new() -> Load {
        // sysinfo keeps a /proc file open for each process it indexes (up to half the fd
        // limit): for every process of the machine, a hundred descriptors or more held
        // for nothing, their count changing with each process that comes and goes.
        sysinfo::set_open_files_limit(0);
        let mut l = Load {
            sys: sysinfo::System::new(),
            me: std::process::id(),
        };
        l.refresh();
        l
    }

    fn refresh(&mut self) {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};
        self.sys.refresh_cpu_usage();
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_cpu(),
        );
    }

    /// % of the machine's CPU used by other programs since the last sample. Blocking
    /// (reads every process): call off the async threads.
    pub fn sample(&mut self) -> f32 {
        self.refresh();
        let cores = self.sys.cpus().len().max(1) as f32;
        let parents: HashMap<u32, Option<u32>> = self
            .sys
            .processes()
            .iter()
            .map(|(pid, p)| (pid.as_u32(), p.parent().map(|q| q.as_u32())))
            .collect();
        let ours: f32 = self
            .sys
            .processes()
            .iter()
            .filter(|(pid, _)| descends(pid.as_u32(), self.me, &parents))
            .map(|(_, p)| p.cpu_usage())
            .sum();
        others(self.sys.global_cpu_usage(), ours, cores)
    }
}

/// macOS: the machine's CPU ticks (Mach host statistics) and this process tree's CPU
/// time (libproc), read by `os::macos` without sysinfo's frameworks.
#[cfg(target_os = "macos")]
pub struct Load {
    cores: f32,
    last: Option<MacSample>,
}

#[cfg(target_os = "macos")]
struct MacSample {
    ticks: [u32; 4],
    ours_ns: u64,
    at: std::time::Instant,
}

#[cfg(target_os = "macos")]
impl Load {
    pub fn new() -> Load {
        Load {
            cores: crate::os::usage::logical_cpus().max(1) as f32,
            last: Self::read(),
        }
    }

    fn read() -> Option<MacSample> {
        Some(MacSample {
            ticks: crate::os::macos::machine_ticks()?,
            ours_ns: crate::os::macos::tree_cpu_ns(std::process::id()),
            at: std::time::Instant::now(),
        })
    }

    /// % of the machine's CPU used by other programs since the last sample.
    pub fn sample(&mut self) -> f32 {
        let now = Self::read();
        let share = match (&self.last, &now) {
            (Some(a), Some(b)) => match crate::os::macos::busy_share(a.ticks, b.ticks) {
                Some(machine) => {
                    let wall = b.at.duration_since(a.at).as_nanos().max(1) as f32;
                    // % of one core, as sysinfo gives a process's use elsewhere.
                    let ours = 100.0 * b.ours_ns.saturating_sub(a.ours_ns) as f32 / wall;
                    others(machine, ours, self.cores)
                }
                None => 0.0,
            },
            _ => 0.0,
        };
        self.last = now;
        share
    }
}

/// Whether `pid` is `root` or one of its descendants.
#[cfg_attr(target_os = "macos", allow(dead_code))]
fn descends(pid: u32, root: u32, parents: &HashMap<u32, Option<u32>>) -> bool {
    let mut at = Some(pid);
    // Bounded: a parent table read mid-change might hold a loop.
    for _ in 0..64 {
        match at {
            Some(p) if p == root => return true,
            Some(p) => at = parents.get(&p).copied().flatten(),
            None => return false,
        }
    }
    false
}

/// Others' share: the machine's % less ours (ours is in % of one core).
fn others(machine: f32, ours_per_core: f32, cores: f32) -> f32 {
    (machine - ours_per_core / cores).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(target_os = "macos"))]
    const MIN_INTERVAL: std::time::Duration = sysinfo::MINIMUM_CPU_UPDATE_INTERVAL;
    #[cfg(target_os = "macos")]
    const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

    #[test]
    fn ours_is_the_tree_under_this_process_and_is_not_counted() {
        let parents: HashMap<u32, Option<u32>> = [
            (1, None),
            (10, Some(1)),  // us
            (11, Some(10)), // a child
            (12, Some(11)), // its helper
            (20, Some(1)),  // someone else
        ]
        .into_iter()
        .collect();
        assert!(descends(12, 10, &parents));
        assert!(descends(10, 10, &parents));
        assert!(!descends(20, 10, &parents));
        assert!(!descends(99, 10, &parents));
        // Two cores, both flat out: ours uses 150% of a core, others the rest (25%).
        assert_eq!(others(100.0, 150.0, 2.0), 25.0);
        assert_eq!(others(10.0, 40.0, 2.0), 0.0);
    }

    #[test]
    fn a_sample_of_this_machine_is_a_percentage() {
        let mut l = Load::new();
        std::thread::sleep(MIN_INTERVAL);
        let s = l.sample();
        assert!((0.0..=100.0).contains(&s), "{s}");
    }
}
