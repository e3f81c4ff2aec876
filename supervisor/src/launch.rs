//! From command-line pool options to a running pool: probe the machine, decide the
//! children (`sizing`), print the decision, resolve the model, start the pool.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use chaarfm_child::{model, runtime, Device};

use crate::cli::PoolArgs;
use crate::pool::proc::ProcSpawner;
use crate::pool::{ChildSpec, Pool, PoolConfig};
use crate::sizing;

/// Patches per inference call on a GPU: it wants large batches (the shared engine runs the
/// rest of the model on this many patches at once). One on CPU: fastest there, measured.
const GPU_BATCH: usize = 32;

/// The children of `plan`: GPU children first (one per device), then CPU ones.
fn child_specs(plan: &sizing::Plan, args: &PoolArgs) -> Vec<ChildSpec> {
    let (engine, nice) = (args.engine, args.child_nice);
    let gpu = plan.gpu_children.iter().map(|&i| ChildSpec {
        device: Device::Cuda(i),
        threads: 1,
        batch: GPU_BATCH,
        engine,
        nice,
    });
    let cpu = (0..plan.cpu_children).map(|_| ChildSpec {
        device: Device::Cpu,
        threads: 1,
        batch: 1,
        engine,
        nice,
    });
    gpu.chain(cpu).collect()
}

/// A started pool and how many children it runs.
pub struct Started {
    pub pool: Pool,
    pub task: tokio::task::JoinHandle<()>,
    pub children: usize,
    /// Where the children's sockets are (connect mode puts its control socket there).
    pub runtime_dir: std::path::PathBuf,
}

/// Starts a pool for `args`, its sockets in a runtime directory beside `state_dir`
/// (`os::runtime_dir`). Fails early, with what to do, when the model or the ONNX Runtime
/// library is missing (rather than letting every child die on it).
pub fn start_pool(
    args: &PoolArgs,
    model_arg: Option<&Path>,
    state_dir: &Path,
) -> anyhow::Result<Started> {
    let model = model::resolve(model_arg)?;
    let ort = runtime::locate()?;
    let inv = sizing::probe(Some(&ort));
    let plan = sizing::decide(&inv, args.workers, args.device);
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!("workers: {}", plan.reasons);
    let children = child_specs(&plan, args);
    let n = children.len().max(1) as u64;
    let max_child_memory_mb = args
        .max_child_memory
        .unwrap_or_else(|| (inv.available_mb / n / 2).clamp(512, 4096));
    let cfg = PoolConfig {
        children,
        job_timeout: args.job_timeout.map(Duration::from_secs),
        max_child_memory_mb,
        max_jobs_per_child: args.max_jobs_per_child,
    };
    tracing::debug!(max_child_memory_mb, "pool limits");
    let exe = std::env::current_exe().context("locating the chaarfm-super executable")?;
    let runtime_dir = crate::os::runtime_dir(state_dir);
    crate::os::fresh_private_dir(&runtime_dir).with_context(|| {
        format!(
            "creating the runtime directory {} for the children's sockets",
            runtime_dir.display()
        )
    })?;
    let children = cfg.children.len();
    let spawner = ProcSpawner::new(exe, model, runtime_dir.clone());
    let (pool, task) = Pool::start(cfg, Box::new(spawner));
    Ok(Started {
        pool,
        task,
        children,
        runtime_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaarfm_child::Engine;

    #[test]
    fn gpu_children_batch_patches_and_every_child_gets_the_engine() {
        let plan = sizing::Plan {
            cpu_children: 2,
            gpu_children: vec![0, 1],
            reasons: String::new(),
            warnings: Vec::new(),
        };
        for engine in [Engine::Shared, Engine::Patch] {
            let args = PoolArgs {
                workers: crate::sizing::Workers::Auto,
                device: crate::sizing::DeviceChoice::Auto,
                job_timeout: None,
                max_child_memory: None,
                max_jobs_per_child: None,
                engine,
                child_nice: 10,
            };
            let specs = child_specs(&plan, &args);
            let got: Vec<(Device, usize)> = specs.iter().map(|s| (s.device, s.batch)).collect();
            assert_eq!(
                got,
                vec![
                    (Device::Cuda(0), GPU_BATCH),
                    (Device::Cuda(1), GPU_BATCH),
                    (Device::Cpu, 1),
                    (Device::Cpu, 1)
                ]
            );
            assert!(specs
                .iter()
                .all(|s| s.engine == engine && s.threads == 1 && s.nice == 10));
        }
    }
}
