//! Whether the worker takes jobs: the two ways a fault of this machine pauses it, and
//! the computing preferences (`prefs`), which pause it by choice.

use tokio::sync::watch;

use crate::prefs::decide::Pause;

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
    /// The preferences say not now (on battery, busy, outside hours, low disk).
    Preference(Pause),
}

impl Intake {
    /// The reason a paused intake gives (protocol 2's `pause`).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Intake::Open => None,
            Intake::Paused(r) | Intake::YouTube(r) => Some(r),
            Intake::Probe => Some("trying one job to see whether YouTube works again"),
            Intake::Preference(p) => Some(&p.reason),
        }
    }

    /// The `reason` label of `chaarfm_paused`, when paused.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Intake::Open => None,
            Intake::Paused(_) => Some("disk"),
            Intake::YouTube(_) | Intake::Probe => Some("youtube"),
            Intake::Preference(p) => Some(p.label),
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

/// Applies what the preferences want now. A fault's pause stays as it is (its recovery
/// reopens through [`reopen`], which honours the preferences); a preference pause
/// replaces an open intake or a YouTube probe, and lifting it reopens intake.
pub fn prefer(intake: &watch::Sender<Intake>, wanted: Option<Pause>) {
    intake.send_if_modified(|i| match (&*i, wanted) {
        (Intake::Open | Intake::Probe, Some(p)) => {
            *i = Intake::Preference(p);
            true
        }
        (Intake::Preference(now), Some(p)) if now.label != p.label => {
            *i = Intake::Preference(p);
            true
        }
        (Intake::Preference(_), None) => {
            *i = Intake::Open;
            true
        }
        _ => false,
    });
}

/// A fault's recovery reopens intake: open, unless the preferences pause it.
pub fn reopen(intake: &watch::Sender<Intake>, preference: &watch::Receiver<Option<Pause>>) {
    let next = match preference.borrow().clone() {
        Some(p) => Intake::Preference(p),
        None => Intake::Open,
    };
    intake.send_replace(next);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(label: &'static str) -> Pause {
        Pause {
            label,
            reason: label.to_string(),
        }
    }

    #[test]
    fn a_preference_never_hides_a_fault_and_a_recovery_honours_it() {
        let (tx, _rx) = watch::channel(Intake::Open);
        prefer(&tx, Some(pause("battery")));
        assert_eq!(*tx.borrow(), Intake::Preference(pause("battery")));
        prefer(&tx, None);
        assert_eq!(*tx.borrow(), Intake::Open);
        // A disk fault stays; its recovery reopens into the preference's pause.
        let _ = tx.send(Intake::Paused("disk".into()));
        prefer(&tx, Some(pause("hours")));
        assert_eq!(*tx.borrow(), Intake::Paused("disk".into()));
        let (ptx, prx) = watch::channel(Some(pause("hours")));
        reopen(&tx, &prx);
        assert_eq!(*tx.borrow(), Intake::Preference(pause("hours")));
        assert_eq!(tx.borrow().label(), Some("hours"));
        let _ = ptx.send(None);
        reopen(&tx, &prx);
        assert_eq!(*tx.borrow(), Intake::Open);
        // A YouTube probe yields to a preference.
        let _ = tx.send(Intake::Probe);
        prefer(&tx, Some(pause("busy")));
        assert_eq!(tx.borrow().reason(), Some("busy"));
    }
}
