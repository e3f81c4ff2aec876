//! How much of the machine's CPU other programs use: the whole machine's use minus that
//! of this process tree (the supervisor, its children, yt-dlp), as BOINC's
//! `suspend_cpu_usage` counts only non-BOINC work.

use std::collections::HashMap;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Samples the CPU use of other programs; each sample covers the time since the last.
pub struct Load {
    sys: System,
    me: Pid,
}

impl Load {
    pub fn new() -> Load {
        // sysinfo keeps a /proc file open for each process it indexes (up to half the fd
        // limit): for every process of the machine, a hundred descriptors or more held
        // for nothing, their count changing with each process that comes and goes.
        sysinfo::set_open_files_limit(0);
        let mut l = Load {
            sys: System::new(),
            me: Pid::from_u32(std::process::id()),
        };
        l.refresh();
        l
    }

    fn refresh(&mut self) {
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
        let parents: HashMap<Pid, Option<Pid>> = self
            .sys
            .processes()
            .iter()
            .map(|(pid, p)| (*pid, p.parent()))
            .collect();
        let ours: f32 = self
            .sys
            .processes()
            .iter()
            .filter(|(pid, _)| descends(**pid, self.me, &parents))
            .map(|(_, p)| p.cpu_usage())
            .sum();
        others(self.sys.global_cpu_usage(), ours, cores)
    }
}

/// Whether `pid` is `root` or one of its descendants.
fn descends(pid: Pid, root: Pid, parents: &HashMap<Pid, Option<Pid>>) -> bool {
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

    #[test]
    fn ours_is_the_tree_under_this_process_and_is_not_counted() {
        let p = Pid::from_u32;
        let parents: HashMap<Pid, Option<Pid>> = [
            (p(1), None),
            (p(10), Some(p(1))),  // us
            (p(11), Some(p(10))), // a child
            (p(12), Some(p(11))), // its helper
            (p(20), Some(p(1))),  // someone else
        ]
        .into_iter()
        .collect();
        assert!(descends(p(12), p(10), &parents));
        assert!(descends(p(10), p(10), &parents));
        assert!(!descends(p(20), p(10), &parents));
        assert!(!descends(p(99), p(10), &parents));
        // Two cores, both flat out: ours uses 150% of a core, others the rest (25%).
        assert_eq!(others(100.0, 150.0, 2.0), 25.0);
        assert_eq!(others(10.0, 40.0, 2.0), 0.0);
    }

    #[test]
    fn a_sample_of_this_machine_is_a_percentage() {
        let mut l = Load::new();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = l.sample();
        assert!((0.0..=100.0).contains(&s), "{s}");
    }
}
