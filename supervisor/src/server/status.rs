//! Seeing an overnight run: connect mode logs a status line every minute
//! (`status::every`) and the same figures at exit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::hub::{Hub, Summary};

/// How often the status line is logged.
pub const EVERY: Duration = Duration::from_secs(60);

/// The figures of one status line.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub summary: Summary,
    /// Audio embedded so far and time since start, in seconds.
    pub audio_s: f64,
    pub elapsed_s: f64,
    pub alive: usize,
    pub children: usize,
    pub restarts: usize,
    pub connected: bool,
    /// Why intake is paused (`disk`, `youtube`), if it is.
    pub paused: Option<&'static str>,
    pub outbox: usize,
    /// Downloads in flight, and the age of the oldest in seconds.
    pub downloads: usize,
    pub oldest_download_s: f64,
    /// Restarts by cause (`pool::policy::Cause::label`).
    pub restarts_by: Vec<(&'static str, u64)>,
    /// Jobs waiting for a child.
    pub queued: usize,
    /// Unix time of the last error (child death, job failure, lost connection); 0: none.
    pub last_error_unix: u64,
}

/// One line a person reads at a glance.
pub fn line(s: &Snapshot) -> String {
    let xrt = if s.elapsed_s > 0.0 {
        s.audio_s / s.elapsed_s
    } else {
        0.0
    };
    format!(
        "{} done ({} failed), {} handed back; {:.0} s of audio, {:.1}x realtime; {}/{} children alive, {} restart(s); {}{}; {}outbox {}",
        s.summary.jobs_done,
        s.summary.failed,
        s.summary.handed_back,
        s.audio_s,
        xrt,
        s.alive,
        s.children,
        s.restarts,
        if s.connected { "connected" } else { "not connected" },
        s.paused.map(|p| format!(", paused ({p})")).unwrap_or_default(),
        if s.downloads > 0 {
            format!(
                "downloading {} (oldest {:.0} s); ",
                s.downloads, s.oldest_download_s
            )
        } else {
            String::new()
        },
        s.outbox
    )
}

/// The figures now.
pub async fn snapshot(ctx: &Ctx, hub: &Hub) -> Snapshot {
    let stats = &ctx.pool.stats;
    let flights: Vec<Instant> = ctx
        .downloads
        .lock()
        .map(|d| d.values().copied().collect())
        .unwrap_or_default();
    Snapshot {
        summary: hub.summary().await,
        audio_s: stats.audio_ms.load(Ordering::Relaxed) as f64 / 1e3,
        elapsed_s: ctx.started.elapsed().as_secs_f64(),
        alive: stats.alive.load(Ordering::Relaxed),
        children: ctx.children,
        restarts: stats.restarts.load(Ordering::Relaxed),
        connected: *ctx.watch.connected.borrow(),
        paused: ctx.watch.intake.borrow().label(),
        outbox: ctx.outbox.len(),
        downloads: flights.len(),
        oldest_download_s: flights
            .iter()
            .map(|t| t.elapsed().as_secs_f64())
            .fold(0.0, f64::max),
        restarts_by: stats
            .restarts_by
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default(),
        queued: stats.queued.load(Ordering::Relaxed),
        last_error_unix: stats.last_error_unix.load(Ordering::Relaxed),
    }
}

/// Logs the status line every [`EVERY`] until aborted.
pub async fn every(ctx: Arc<Ctx>, hub: Hub) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = snapshot(&ctx, &hub).await;
        tracing::info!("status: {}", line(&s));
    }
}

/// A run's figures for tests of what shows them (this line, `/metrics`).
#[cfg(test)]
pub fn example() -> Snapshot {
    Snapshot {
        summary: Summary {
            jobs_done: 42,
            failed: 3,
            handed_back: 1,
        },
        audio_s: 9000.0,
        elapsed_s: 120.0,
        alive: 2,
        children: 2,
        restarts: 5,
        connected: true,
        paused: None,
        outbox: 1,
        downloads: 0,
        oldest_download_s: 0.0,
        restarts_by: vec![("crash", 4), ("timeout", 1)],
        queued: 7,
        last_error_unix: 1_790_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_says_everything_at_a_glance() {
        let s = example();
        assert_eq!(
            line(&s),
            "42 done (3 failed), 1 handed back; 9000 s of audio, 75.0x realtime; 2/2 children alive, 5 restart(s); connected; outbox 1"
        );
        let idle = Snapshot {
            elapsed_s: 0.0,
            connected: false,
            ..s.clone()
        };
        assert!(line(&idle).contains("0.0x realtime") && line(&idle).contains("not connected"));
        let paused = Snapshot {
            paused: Some("youtube"),
            ..s.clone()
        };
        assert!(
            line(&paused).contains("; connected, paused (youtube); outbox 1"),
            "{}",
            line(&paused)
        );
        let downloading = Snapshot {
            downloads: 2,
            oldest_download_s: 95.4,
            ..s.clone()
        };
        assert!(
            line(&downloading).ends_with("; connected; downloading 2 (oldest 95 s); outbox 1"),
            "{}",
            line(&downloading)
        );
    }
}
