//! The tasks that end a pause of intake caused by this machine: the disk ([`disk`]) and
//! YouTube ([`youtube`]); each tells the hub when intake may reopen, and the hub decides
//! into what (the preferences may still pause it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::ctx::Ctx;
use super::hub::Hub;
use super::intake::Intake;
use crate::backoff::Backoff;

/// Size of the probe file written to see whether the disk works again.
const PROBE_BYTES: usize = 1 << 20;

/// The longest wait of a YouTube pause.
const YOUTUBE_BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// The first wait of a YouTube pause (`CHAARFM_YOUTUBE_BACKOFF_S`, default 5 min); it
/// doubles after each failed probe, up to [`YOUTUBE_BACKOFF_MAX`].
fn youtube_backoff() -> Duration {
    std::env::var("CHAARFM_YOUTUBE_BACKOFF_S")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .map_or(Duration::from_secs(300), Duration::from_secs_f64)
}

/// While YouTube refuses this machine: wait, then let one job through (`Intake::Probe`;
/// the hub runs it and reopens intake if YouTube answered), doubling the wait after each
/// failed probe (5 min to 1 h).
pub async fn youtube(ctx: Arc<Ctx>, hub: Hub) {
    let mut backoff = Backoff::new(youtube_backoff(), 2.0, YOUTUBE_BACKOFF_MAX);
    let mut intake = ctx.watch.intake.clone();
    loop {
        if intake
            .wait_for(|i| matches!(i, Intake::YouTube(_)))
            .await
            .is_err()
        {
            return;
        }
        let wait = backoff.next_delay();
        tracing::warn!(
            "YouTube paused: trying again in {} s (then one job first)",
            wait.as_secs()
        );
        tokio::time::sleep(wait).await;
        // Applied when this returns: protocol 2 reopens, today's server probes first.
        hub.youtube_wait_over().await;
        let Ok(after) = intake.wait_for(|i| *i != Intake::Probe).await else {
            return;
        };
        if !matches!(*after, Intake::YouTube(_)) {
            backoff.reset();
        }
    }
}

/// Writes and removes a probe file in `dir`: whether downloads can be stored again.
pub fn probe_disk(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    crate::os::ensure_private_dir(dir)?;
    let p = dir.join("probe.tmp");
    let r = (|| {
        let mut f = std::fs::File::create(&p)?;
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&p);
    r
}

/// While intake is paused for the disk: probe it with backoff, write what the outbox
/// holds in memory, and tell the hub when both work.
pub async fn disk(ctx: Arc<Ctx>, hub: Hub) {
    let mut intake = ctx.watch.intake.clone();
    loop {
        if intake
            .wait_for(|i| matches!(i, Intake::Paused(_)))
            .await
            .is_err()
        {
            return;
        }
        let mut backoff = Backoff::reconnect();
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            let c = Arc::clone(&ctx);
            let ok = tokio::task::spawn_blocking(move || {
                probe_disk(&c.tmp).and_then(|()| c.outbox.persist())
            })
            .await;
            match ok {
                Ok(Ok(())) => {
                    tracing::info!("the state dir can be written again: taking jobs");
                    hub.recovered().await;
                    break;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "state dir still failing"),
                Err(_) => {}
            }
        }
    }
}

/// A private directory for downloads (0700), emptied at start.
pub fn private_tmp(state_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = state_dir.join("tmp");
    crate::os::fresh_private_dir(&dir)?;
    Ok(dir)
}
