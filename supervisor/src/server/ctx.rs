//! What the lanes, the hub and the job tasks share: settings fixed at start and the
//! hub's published facts (read-only here: `hub::Watch`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::facts::Watch;
use super::intake::Intake;
use super::outbox::Outbox;
use super::record::Record;
use super::{download, youtube};
use crate::pool::Pool;
use crate::prefs::monitor::Decider;

/// What the lanes, the hub and the job tasks share: settings and published state
/// (`watch`es). What changes per job is the hub's alone (`server::hub`).
pub struct Ctx {
    pub pool: Pool,
    /// The computing preferences and what they decide (`prefs::monitor`).
    pub prefs: Arc<Decider>,
    /// Tracks done per hour, today, in all; the last failures (`status`, the page).
    pub record: Arc<Record>,
    /// yt-dlp's version and when it was asked (`report`).
    pub ytdlp_seen: std::sync::Mutex<Option<(Instant, String)>>,
    pub outbox: Arc<Outbox>,
    pub limits: download::Limits,
    pub ytdlp: Option<download::YtDlp>,
    pub tmp: PathBuf,
    /// Unknown yt-dlp errors in a row (`youtube::Breaker`).
    pub breaker: std::sync::Mutex<youtube::Breaker>,
    /// Updates a stale yt-dlp of our own venv (`youtube::Updater`).
    pub updater: youtube::Updater,
    /// Downloads in flight: job id -> when it started (the status line shows their age).
    pub downloads: std::sync::Mutex<HashMap<String, Instant>>,
    /// Each job's download and embedding times, and the jobs wanted in hand from them.
    pub pace: super::pace::Pace,
    pub(super) url: String,
    pub(super) masked_url: String,
    /// The pairing code as logs and errors may show it.
    pub(super) masked_code: String,
    pub(super) base: String,
    /// What the hub publishes: intake, connected, welcome, the drain.
    pub(super) watch: Watch,
    /// Children in the pool, and children + 1 slots at start: the next download overlaps
    /// inference (against today's server `pace` may add more).
    pub(super) children: usize,
    pub(super) slots: usize,
    /// When connect mode started (the run's figures).
    pub(super) started: Instant,
}

impl Ctx {
    pub(super) fn paused(&self) -> bool {
        *self.watch.intake.borrow() != Intake::Open
    }

    pub(super) fn protocol2(&self) -> bool {
        self.watch.welcome.borrow().is_some()
    }
}
