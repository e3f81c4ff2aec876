//! One submit-and-collect path for `embed` and `ingest`: files go to the pool with a
//! bounded number in flight; each result is handed to the caller as it finishes. A
//! pool stop or an interrupt ends intake; jobs not run for a local reason are never
//! handed over as failures (they stay for a rerun).

use std::path::PathBuf;

use chaarfm_shared::ipc::JobOutput;
use tokio::task::JoinSet;

use crate::pool::{JobFailure, Pool, PoolStopped};
use crate::signals::Signals;

/// How a batch ended.
#[derive(Debug, Default)]
pub struct Collected {
    /// The pool stopped: the cause (a local fault).
    pub stopped: Option<PoolStopped>,
    /// A first Ctrl-C / SIGTERM drained the batch.
    pub interrupted: bool,
    /// Files never finished (not submitted, or not run for a local reason).
    pub left: usize,
}

/// Runs `files` (indices into the caller's list) through `pool`, `in_flight` at a time,
/// calling `on_result(index, result)` for every file that got a result of its own (a
/// vector, or a failure that belongs to the file). A second interrupt exits at once.
pub async fn collect<F>(
    pool: &Pool,
    files: Vec<(usize, PathBuf)>,
    tags: bool,
    in_flight: usize,
    mut on_result: F,
) -> anyhow::Result<Collected>
where
    F: FnMut(usize, Result<JobOutput, JobFailure>) -> anyhow::Result<()>,
{
    let mut signals = Signals::new()?;
    let mut queue = files.into_iter();
    let mut set = JoinSet::new();
    let mut out = Collected::default();
    let mut intake = true;
    loop {
        while intake && set.len() < in_flight.max(1) {
            let Some((i, path)) = queue.next() else { break };
            let pool = pool.clone();
            set.spawn(async move { (i, pool.embed(path, tags).await) });
        }
        let joined = tokio::select! {
            j = set.join_next() => j,
            _ = signals.next() => {
                if out.interrupted {
                    crate::logging::eprint("chaarfm-super: second interrupt, stopping now\n");
                    crate::signals::exit_now(130);
                }
                out.interrupted = true;
                intake = false;
                tracing::warn!("interrupted: finishing the {} job(s) in flight (interrupt again to stop now)", set.len());
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (i, result) = joined?;
        match result {
            Err(JobFailure::Stopped(s)) => {
                intake = false;
                out.left += 1;
                out.stopped.get_or_insert(s);
            }
            Err(JobFailure::ShuttingDown) => {
                intake = false;
                out.left += 1;
            }
            r => on_result(i, r)?,
        }
    }
    out.left += queue.len();
    Ok(out)
}
