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

/// A started pool and how many children it runs.
pub struct Started {
    pub pool: Pool,
    pub task: tokio::task::JoinHandle<()>,
    pub children: usize,
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
    let mut children: Vec<ChildSpec> = plan
        .gpu_children
        .iter()
        .map(|&i| ChildSpec {
            device: Device::Cuda(i),
            threads: 1,
            batch: 32,
            engine: args.engine,
        })
        .collect();
    children.extend((0..plan.cpu_children).map(|_| ChildSpec {
        device: Device::Cpu,
        threads: 1,
        batch: 1,
        engine: args.engine,
    }));
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
    let spawner = ProcSpawner::new(exe, model, runtime_dir);
    let (pool, task) = Pool::start(cfg, Box::new(spawner));
    Ok(Started {
        pool,
        task,
        children,
    })
}
