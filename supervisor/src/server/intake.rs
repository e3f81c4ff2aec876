//! Whether the worker takes jobs, and the two ways a fault of this machine pauses it.

use tokio::sync::watch;

/// Whether the worker takes jobs.
#[derive(Debug, Clone, PartialEq)]
pub enum Intake {
    Open,
    /// The state dir cannot be written: jobs are handed back until a probe succeeds.
    Paused(String),
    /// YouTube refuses this machine: backing off (`server::recover_youtube`).
    YouTube(String),
    /// The back-off ended: one job runs to see whether YouTube takes this machine again
    /// (today's server; protocol 2 simply reopens).
    Probe,
}

impl Intake {
    /// The reason a paused intake gives (protocol 2's `pause`).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Intake::Open => None,
            Intake::Paused(r) | Intake::YouTube(r) => Some(r),
            Intake::Probe => Some("trying one job to see whether YouTube works again"),
        }
    }

    /// The `reason` label of `chaarfm_paused`, when paused.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Intake::Open => None,
            Intake::Paused(_) => Some("disk"),
            Intake::YouTube(_) | Intake::Probe => Some("youtube"),
        }
    }
}

/// Stops intake for a local fault; logged once per change of state.
pub fn pause(intake: &watch::Sender<Intake>, reason: String) {
    intake.send_if_modified(|i| {
        if *i == Intake::Open {
            tracing::error!(%reason, "pausing: no new jobs until the state dir can be written again (jobs are handed back to the server, not failed)");
            *i = Intake::Paused(reason);
            true
        } else {
            false
        }
    });
}

/// Stops intake because YouTube refuses this machine (or resumes the back-off after a
/// failed probe); logged once per pause. A disk pause stays as it is.
pub fn pause_youtube(intake: &watch::Sender<Intake>, reason: String) {
    intake.send_if_modified(|i| match i {
        Intake::Open | Intake::Probe => {
            if *i == Intake::Open {
                tracing::error!(%reason, "pausing: YouTube refuses this machine; no new jobs for a while (jobs are handed back to the server, not failed)");
            }
            *i = Intake::YouTube(reason);
            true
        }
        _ => false,
    });
}
