//! What the lanes, the hub and the job tasks share: settings fixed at start and the
//! published state (`watch`es).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

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
    pub(super) url: String,
    pub(super) masked_url: String,
    /// The pairing code as logs and errors may show it.
    pub(super) masked_code: String,
    pub(super) base: String,
    /// Set once, by the first stop request: the one flag `server::stopping` reads.
    pub(super) draining: watch::Sender<bool>,
    pub(super) intake: Arc<watch::Sender<Intake>>,
    /// `Some(slots)` once a server said `welcome`: protocol 2.
    pub(super) welcome: watch::Sender<Option<usize>>,
    /// Whether any lane is connected: written by the hub only.
    pub(super) connected: Arc<watch::Sender<bool>>,
    pub(super) fatal: watch::Sender<Option<String>>,
    /// Children + 1: the next download overlaps inference.
    pub(super) slots: usize,
}

impl Ctx {
    pub(super) fn paused(&self) -> bool {
        *self.intake.borrow() != Intake::Open
    }

    pub(super) fn protocol2(&self) -> bool {
        self.welcome.borrow().is_some()
    }
}
