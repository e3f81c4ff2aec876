//! How many children, on which devices (`--workers auto|N`, `--device auto|cpu|cuda`).
//!
//! [`decide`] is a pure function of an [`Inventory`], so its decisions are unit-tested on
//! simulated machines; [`probe`] reads the real one. The rule:
//! - usable cores = the cgroup CPU quota (rounded down, at least 1) or the logical CPUs;
//! - each child needs about [`CHILD_FOOTPRINT_MB`] of memory (measured peak RSS of a
//!   child on a 418 s track, plus margin); children are capped by available memory (or
//!   the cgroup memory limit) minus a reserve for the supervisor;
//! - with CUDA usable (a GPU, this build's `cuda` feature, and a runtime library with the
//!   CUDA provider): one child per GPU, each also taking one core for decoding; CPU
//!   children fill the remaining cores;
//! - `--workers N` sets the total (GPU children first); memory only warns then.

use std::fmt::Write as _;

/// Memory one child needs, in MB (measured peak ~130 MB on wz-track5.webm + margin).
pub const CHILD_FOOTPRINT_MB: u64 = 200;
/// Memory kept for the supervisor and the system, in MB.
pub const SUPERVISOR_RESERVE_MB: u64 = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
}

/// What the machine offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    pub logical_cpus: usize,
    /// CPU quota of our cgroup in CPUs (1.5 = 150 ms per 100 ms), if any.
    pub cpu_quota: Option<f64>,
    /// Memory available to us in MB (system available, or the cgroup's headroom if lower).
    pub available_mb: u64,
    pub gpus: Vec<Gpu>,
    /// This build has ort's CUDA support.
    pub cuda_build: bool,
    /// The ONNX Runtime library has the CUDA execution provider next to it.
    pub cuda_runtime: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// The decision, with the reasoning printed at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub cpu_children: usize,
    /// One entry per GPU child: the CUDA device index.
    pub gpu_children: Vec<u32>,
    pub reasons: String,
    pub warnings: Vec<String>,
}

impl Plan {
    #[cfg(test)]
    pub fn total(&self) -> usize {
        self.cpu_children + self.gpu_children.len()
    }
}

/// Decides the children for `inv`.
pub fn decide(inv: &Inventory, workers: Workers, device: DeviceChoice) -> Plan {
    let mut warnings = Vec::new();
    let mut reasons = String::new();
    let logical = inv.logical_cpus.max(1);
    let cores = match inv.cpu_quota {
        Some(q) => (q.floor() as usize).clamp(1, logical),
        None => logical,
    };
    let _ = write!(reasons, "{cores} usable core(s)");
    if let Some(q) = inv.cpu_quota {
        let _ = write!(
            reasons,
            " (limited to {q} of {logical} CPUs by a cgroup quota or affinity)"
        );
    }
    let by_memory =
        (inv.available_mb.saturating_sub(SUPERVISOR_RESERVE_MB) / CHILD_FOOTPRINT_MB) as usize;
    let _ = write!(
        reasons,
        ", {} MB available: room for {by_memory} child(ren) of ~{CHILD_FOOTPRINT_MB} MB",
        inv.available_mb
    );

    let cuda_ok = inv.cuda_build && inv.cuda_runtime && !inv.gpus.is_empty();
    let use_gpu = match device {
        DeviceChoice::Cpu => false,
        DeviceChoice::Auto => cuda_ok,
        DeviceChoice::Cuda => {
            if !cuda_ok {
                let why = if inv.gpus.is_empty() {
                    "no GPU found"
                } else if !inv.cuda_build {
                    "this build has no CUDA support (build with --features cuda)"
                } else {
                    "the ONNX Runtime library has no CUDA provider (install onnxruntime-gpu)"
                };
                warnings.push(format!(
                    "--device cuda requested but {why}: falling back to CPU"
                ));
            }
            cuda_ok
        }
    };
    if device == DeviceChoice::Auto && !inv.gpus.is_empty() && !cuda_ok {
        warnings.push(format!(
            "{} GPU(s) found but CUDA is not usable here (build feature {}, CUDA provider {}): using CPU",
            inv.gpus.len(),
            if inv.cuda_build { "on" } else { "off" },
            if inv.cuda_runtime { "present" } else { "missing" }
        ));
    }
    let gpus: Vec<u32> = if use_gpu {
        inv.gpus.iter().map(|g| g.index).collect()
    } else {
        Vec::new()
    };

    let (gpu_children, cpu_children) = match workers {
        Workers::Auto => {
            let gpu_children = gpus.len().min(by_memory.max(1));
            // Each GPU child needs a core for decoding and features.
            let spare_cores = cores.saturating_sub(gpu_children);
            let spare_memory = by_memory.saturating_sub(gpu_children);
            let mut cpu = spare_cores.min(spare_memory);
            if gpu_children == 0 && cpu == 0 {
                warnings.push(format!(
                    "only {} MB available, less than one child needs (~{CHILD_FOOTPRINT_MB} MB): starting one anyway",
                    inv.available_mb
                ));
                cpu = 1;
            }
            (gpu_children, cpu)
        }
        Workers::Count(n) => {
            let n = n.max(1);
            if n > by_memory {
                warnings.push(format!(
                    "--workers {n} exceeds what memory allows (~{by_memory}); children may be killed by the OOM killer"
                ));
            }
            let g = gpus.len().min(n);
            (g, n - g)
        }
    };
    let _ = write!(reasons, " -> {cpu_children} CPU child(ren)");
    if gpu_children > 0 {
        let _ = write!(reasons, " + {gpu_children} CUDA child(ren)");
    }
    Plan {
        cpu_children,
        gpu_children: gpus.into_iter().take(gpu_children).collect(),
        reasons,
        warnings,
    }
}

/// Reads this machine's inventory.
pub fn probe(ort_library: Option<&std::path::Path>) -> Inventory {
    let available_mb = crate::os::usage::available_mb();
    // std's figure honours cgroup v1/v2 quotas and CPU affinity; `os` counts the CPUs.
    let usable = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let logical_cpus = crate::os::usage::logical_cpus().max(usable);
    Inventory {
        logical_cpus,
        cpu_quota: cpu_quota(logical_cpus, cgroup_cpu_quota(), usable),
        available_mb,
        gpus: nvidia_gpus(),
        cuda_build: cfg!(feature = "cuda"),
        cuda_runtime: ort_library
            .and_then(|p| p.parent())
            .map(|d| d.join(cuda_provider_name()).is_file())
            .unwrap_or(false),
    }
}

/// The quota: cgroup v2's exact `cpu.max` when there is one, else std's usable count when
/// it is below the CPUs (a cgroup v1 quota or an affinity mask), else none.
fn cpu_quota(logical: usize, cpu_max: Option<f64>, usable: usize) -> Option<f64> {
    cpu_max.or_else(|| (usable < logical).then_some(usable as f64))
}

fn cuda_provider_name() -> &'static str {
    if cfg!(windows) {
        "onnxruntime_providers_cuda.dll"
    } else {
        "libonnxruntime_providers_cuda.so"
    }
}

/// cgroup v2 `cpu.max` ("max 100000" or "150000 100000") of our cgroup, in CPUs.
fn cgroup_cpu_quota() -> Option<f64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let text = std::fs::read_to_string("/sys/fs/cgroup/cpu.max").ok()?;
    parse_cpu_max(&text)
}

fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut it = text.split_whitespace();
    let quota: f64 = it.next()?.parse().ok()?;
    let period: f64 = it.next()?.parse().ok()?;
    (period > 0.0).then(|| quota / period)
}

/// NVIDIA GPUs the kernel driver lists (sysinfo has no GPU inventory).
fn nvidia_gpus() -> Vec<Gpu> {
    let Ok(dir) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return Vec::new();
    };
    let mut gpus: Vec<Gpu> = dir
        .flatten()
        .enumerate()
        .map(|(i, e)| {
            let info = std::fs::read_to_string(e.path().join("information")).unwrap_or_default();
            let name = info
                .lines()
                .find_map(|l| l.strip_prefix("Model:"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "NVIDIA GPU".into());
            Gpu {
                index: i as u32,
                name,
            }
        })
        .collect();
    gpus.sort_by_key(|g| g.index);
    gpus
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(cores: usize, quota: Option<f64>, mb: u64, gpus: usize, cuda: bool) -> Inventory {
        Inventory {
            logical_cpus: cores,
            cpu_quota: quota,
            available_mb: mb,
            gpus: (0..gpus as u32)
                .map(|i| Gpu {
                    index: i,
                    name: "sim".into(),
                })
                .collect(),
            cuda_build: cuda,
            cuda_runtime: cuda,
        }
    }

    /// (machine, workers, device) -> (cpu children, gpu children, warnings?)
    #[test]
    fn decisions_on_simulated_machines() {
        let big = 64 * 1024;
        let table: Vec<(Inventory, Workers, DeviceChoice, usize, usize, bool)> = vec![
            (
                machine(1, None, big, 0, false),
                Workers::Auto,
                DeviceChoice::Auto,
                1,
                0,
                false,
            ),
            (
                machine(2, None, big, 0, false),
                Workers::Auto,
                DeviceChoice::Auto,
                2,
                0,
                false,
            ),
            (
                machine(16, None, big, 0, false),
                Workers::Auto,
                DeviceChoice::Auto,
                16,
                0,
                false,
            ),
            (
                machine(64, None, big, 0, false),
                Workers::Auto,
                DeviceChoice::Auto,
                64,
                0,
                false,
            ),
            // cgroup quota of 1.5 CPUs on a 16-core host: one child.
            (
                machine(16, Some(1.5), big, 0, false),
                Workers::Auto,
                DeviceChoice::Auto,
                1,
                0,
                false,
            ),
            // 2 GB free on 16 cores: memory caps it at (2048 - 64) / 200 = 9.
            (
                machine(16, None, 2048, 0, false),
                Workers::Auto,
                DeviceChoice::Auto,
                9,
                0,
                false,
            ),
            // Almost no memory: still one child, with a warning.
            (
                machine(4, None, 100, 0, false),
                Workers::Auto,
                DeviceChoice::Auto,
                1,
                0,
                true,
            ),
            // One usable GPU on 8 cores: one CUDA child, 7 CPU children.
            (
                machine(8, None, big, 1, true),
                Workers::Auto,
                DeviceChoice::Auto,
                7,
                1,
                false,
            ),
            // Four GPUs on 16 cores.
            (
                machine(16, None, big, 4, true),
                Workers::Auto,
                DeviceChoice::Auto,
                12,
                4,
                false,
            ),
            // Four GPUs on 2 cores: GPU children still run; no core left for CPU children.
            (
                machine(2, None, big, 4, true),
                Workers::Auto,
                DeviceChoice::Auto,
                0,
                4,
                false,
            ),
            // GPUs but no CUDA provider: CPU only, with a warning.
            (
                machine(8, None, big, 1, false),
                Workers::Auto,
                DeviceChoice::Auto,
                8,
                0,
                true,
            ),
            // --device cpu ignores GPUs silently.
            (
                machine(8, None, big, 4, true),
                Workers::Auto,
                DeviceChoice::Cpu,
                8,
                0,
                false,
            ),
            // --device cuda without a GPU: CPU fallback with a warning.
            (
                machine(8, None, big, 0, false),
                Workers::Auto,
                DeviceChoice::Cuda,
                8,
                0,
                true,
            ),
            // --workers N sets the total, GPU children first.
            (
                machine(8, None, big, 1, true),
                Workers::Count(3),
                DeviceChoice::Auto,
                2,
                1,
                false,
            ),
            (
                machine(2, None, big, 0, false),
                Workers::Count(1),
                DeviceChoice::Auto,
                1,
                0,
                false,
            ),
            // --workers beyond memory: honoured, with a warning.
            (
                machine(16, None, 1000, 0, false),
                Workers::Count(8),
                DeviceChoice::Auto,
                8,
                0,
                true,
            ),
        ];
        for (i, (inv, w, d, cpu, gpu, warns)) in table.into_iter().enumerate() {
            let plan = decide(&inv, w, d);
            assert_eq!(
                (
                    plan.cpu_children,
                    plan.gpu_children.len(),
                    !plan.warnings.is_empty()
                ),
                (cpu, gpu, warns),
                "row {i}: {inv:?} {w:?} {d:?} -> {plan:?}"
            );
            assert!(plan.total() >= 1, "row {i}");
        }
    }

    #[test]
    fn quota_from_cpu_max_or_from_the_usable_count() {
        assert_eq!(cpu_quota(16, Some(1.5), 2), Some(1.5));
        assert_eq!(
            cpu_quota(16, None, 4),
            Some(4.0),
            "cgroup v1 quota or taskset"
        );
        assert_eq!(cpu_quota(16, None, 16), None);
    }

    #[test]
    fn cgroup_cpu_max_is_parsed() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
    }
}
