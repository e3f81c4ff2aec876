//! From command-line pool options to a running pool: probe the machine, decide the
//! children (`sizing`), print the decision, resolve the model, start the pool.

use std::time::Duration;

use anyhow::Context;
use chaarfm_child::{model, runtime, Device};

use crate::cli::PoolArgs;
use crate::pool::{ChildSpec, Pool, PoolConfig};
use crate::sizing;

/// Starts a pool for `args`. Fails early, with what to do, when the model or the ONNX
/// Runtime library is missing (rather than letting every child die on it).
/// A started pool and how many children it runs.
pub struct Started {
    pub pool: Pool,
    pub task: tokio::task::JoinHandle<()>,
    pub children: usize,
}

pub fn start_pool(args: &PoolArgs, model_arg: Option<&std::path::Path>) -> anyhow::Result<Started> {
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
        })
        .collect();
    children.extend((0..plan.cpu_children).map(|_| ChildSpec {
        device: Device::Cpu,
        threads: 1,
        batch: 1,
    }));
    let n = children.len().max(1) as u64;
    let max_child_memory_mb = args
        .max_child_memory
        .unwrap_or_else(|| (inv.available_mb / n / 2).clamp(512, 4096));
    let cfg = PoolConfig {
        exe: std::env::current_exe().context("locating the chaarfm-super executable")?,
        model,
        children,
        job_timeout: args.job_timeout.map(Duration::from_secs),
        max_child_memory_mb,
        max_jobs_per_child: args.max_jobs_per_child,
    };
    tracing::debug!(max_child_memory_mb, "pool limits");
    let children = cfg.children.len();
    let (pool, task) = Pool::start(cfg).context("starting the pool of child processes")?;
    Ok(Started {
        pool,
        task,
        children,
    })
}
