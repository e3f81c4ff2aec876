//! How one connection speaks to its server, as decisions without I/O: today's server
//! ([`Legacy`]: one job per connection, a result proven processed by the next job, a job
//! handed back by closing) or protocol 2 ([`V2`]: acks, `release`, `pause`/`resume`;
//! `docs/PROTOCOL.md`). The lane (`server::lane`) does what they decide.

use std::time::Duration;

use chaarfm_shared::server::WorkerMsg;
use tokio::time::Instant;

/// Draining against today's server: how long to wait for the next job, which proves the
/// last result was processed, before closing anyway.
pub const PROOF_WAIT: Duration = Duration::from_secs(3);

/// What a lane sees when it looks again (after any event).
#[derive(Debug, Clone, Default)]
pub struct Now {
    pub paused: bool,
    /// Intake's reason when paused (protocol 2's `pause`).
    pub reason: Option<String>,
    pub draining: bool,
    /// Jobs taken on this lane and not yet settled.
    pub busy: usize,
    /// A result for this lane not yet sent on this connection.
    pub unsent: bool,
    /// A result for this lane not yet proven processed.
    pub held: bool,
    /// No command (result, hand-back) waiting for this lane.
    pub no_cmds: bool,
}

/// The next thing a lane does when nothing arrives.
#[derive(Debug, PartialEq)]
pub enum Step {
    Wait,
    Send(WorkerMsg),
    /// The drain is complete: close. `confirm`: wait for the server's close, which shows
    /// it received every result sent before it (then they count as processed).
    Drain {
        confirm: bool,
    },
    /// Paused: close this connection if the hub allows (not the session's last).
    AskToClose,
}

/// What to do with a job that arrives while paused or draining.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    Send(WorkerMsg),
    /// Close to hand it back (today's server requeues it), or hold it in the hub when
    /// this is the session's last connection.
    CloseOrHold,
    /// Draining, today's server: nothing; the connection closes soon and the server
    /// requeues it.
    Leave,
}

/// What to do with a job the hub hands back (a fault of this machine).
#[derive(Debug, PartialEq)]
pub enum HandBack {
    Send(WorkerMsg),
    /// Today's server requeues the job of a closed connection.
    Close,
}

/// The protocol a connection speaks. Every connection starts as [`Legacy`] until the
/// server's `welcome` ([`Protocol::welcomed`]); once any connection was welcomed, new
/// ones start as [`V2`].
#[derive(Debug)]
pub enum Protocol {
    Legacy(Legacy),
    V2(V2),
}

/// Today's server.
#[derive(Debug, Default)]
pub struct Legacy {
    /// Results sent on this connection and not yet proven processed.
    unproven: Vec<String>,
    /// Paused, and the hub said this is the session's last connection: it stays open.
    keeper: bool,
    /// Draining: when to stop waiting for the next job's proof.
    proof_deadline: Option<Instant>,
}

/// Protocol 2.
#[derive(Debug, Default)]
pub struct V2 {
    /// The pause state last told to the server.
    announced_pause: bool,
}

impl Protocol {
    pub fn new(protocol2: bool) -> Protocol {
        if protocol2 {
            Protocol::V2(V2::default())
        } else {
            Protocol::Legacy(Legacy::default())
        }
    }

    /// Today's server: whether a lane may connect now. A connection asks it for a job, so
    /// none while paused, except lane 0 when no lane is connected at all: the session's
    /// last connection keeps the server's queue (a pause of hours must survive a lost
    /// connection). Protocol 2 connects whenever.
    pub fn may_connect(protocol2: bool, lane: usize, paused: bool, any_connected: bool) -> bool {
        protocol2 || !paused || (lane == 0 && !any_connected)
    }

    /// The server said `welcome`: from now on this connection speaks protocol 2. Returns
    /// the results sent before it, which its welcome shows processed.
    pub fn welcomed(&mut self) -> Vec<String> {
        let proven = self.proven();
        *self = Protocol::V2(V2::default());
        proven
    }

    /// A result was sent on this connection.
    pub fn sent(&mut self, job_id: &str) {
        if let Protocol::Legacy(l) = self {
            l.unproven.push(job_id.to_string());
        }
    }

    /// A job arrived: today's server sends the next job only once it has handled the
    /// last result on this connection. The results so proven.
    pub fn proven(&mut self) -> Vec<String> {
        match self {
            Protocol::Legacy(l) => std::mem::take(&mut l.unproven),
            Protocol::V2(_) => Vec::new(),
        }
    }

    /// When the lane must look again without any event (the drain's proof wait).
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Protocol::Legacy(l) => l.proof_deadline,
            Protocol::V2(_) => None,
        }
    }

    /// The hub refused to let this connection close: it is the session's last.
    pub fn keep_open(&mut self) {
        if let Protocol::Legacy(l) = self {
            l.keeper = true;
        }
    }

    /// What to do now, with nothing arriving.
    pub fn next(&mut self, s: &Now, now: Instant) -> Step {
        match self {
            Protocol::Legacy(l) => l.next(s, now),
            Protocol::V2(v) => v.next(s),
        }
    }

    /// A job arrived while paused or draining.
    pub fn refuse(&self, job_id: &str, why: &str, draining: bool) -> Refusal {
        match self {
            Protocol::V2(_) => Refusal::Send(WorkerMsg::Release {
                job_id: job_id.to_string(),
                reason: format!("worker {why}"),
            }),
            Protocol::Legacy(_) if draining => Refusal::Leave,
            Protocol::Legacy(_) => Refusal::CloseOrHold,
        }
    }

    /// The hub hands a job back.
    pub fn hand_back(&self, job_id: String, reason: String) -> HandBack {
        match self {
            Protocol::V2(_) => HandBack::Send(WorkerMsg::Release { job_id, reason }),
            Protocol::Legacy(_) => HandBack::Close,
        }
    }
}

impl Legacy {
    fn next(&mut self, s: &Now, now: Instant) -> Step {
        if !s.paused {
            self.keeper = false;
        }
        if s.busy > 0 || s.unsent {
            return Step::Wait;
        }
        if s.draining {
            // Wait a little for the next job, which proves the last result arrived.
            if self.unproven.is_empty() || self.proof_deadline.is_some_and(|d| d <= now) {
                return Step::Drain { confirm: true };
            }
            self.proof_deadline.get_or_insert(now + PROOF_WAIT);
            return Step::Wait;
        }
        if s.paused && !self.keeper {
            // A connection asks today's server for a job: none while paused, except the
            // session's last, which keeps the server's queue alive.
            return Step::AskToClose;
        }
        Step::Wait
    }
}

impl V2 {
    fn next(&mut self, s: &Now) -> Step {
        // A hand-back settles the job before its `release` is read from the lane's
        // commands: send that first.
        if s.draining && s.busy == 0 && !s.held && s.no_cmds {
            return Step::Drain { confirm: false };
        }
        if s.paused != self.announced_pause {
            self.announced_pause = s.paused;
            return Step::Send(match &s.reason {
                Some(reason) => WorkerMsg::Pause {
                    reason: reason.clone(),
                },
                None => WorkerMsg::Resume,
            });
        }
        Step::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> Now {
        Now {
            no_cmds: true,
            ..Now::default()
        }
    }

    fn paused() -> Now {
        Now {
            paused: true,
            reason: Some("on battery (42%)".into()),
            ..idle()
        }
    }

    #[test]
    fn todays_server_asks_to_close_while_paused_until_the_hub_says_keep() {
        let t = Instant::now();
        let mut p = Protocol::new(false);
        assert_eq!(p.next(&idle(), t), Step::Wait);
        let busy = Now {
            busy: 1,
            ..paused()
        };
        assert_eq!(p.next(&busy, t), Step::Wait, "a lane with a job stays");
        assert_eq!(p.next(&paused(), t), Step::AskToClose);
        p.keep_open();
        assert_eq!(p.next(&paused(), t), Step::Wait, "the session's last stays");
        // Open again, then paused again: ask again.
        assert_eq!(p.next(&idle(), t), Step::Wait);
        assert_eq!(p.next(&paused(), t), Step::AskToClose);
    }

    #[test]
    fn todays_server_drains_after_the_next_jobs_proof_or_a_short_wait() {
        let t = Instant::now();
        let draining = Now {
            draining: true,
            ..idle()
        };
        let mut p = Protocol::new(false);
        assert_eq!(p.next(&draining, t), Step::Drain { confirm: true });
        p.sent("j1");
        assert_eq!(p.next(&draining, t), Step::Wait, "j1 not yet proven");
        assert_eq!(p.deadline(), Some(t + PROOF_WAIT));
        assert_eq!(
            p.next(&draining, t + PROOF_WAIT),
            Step::Drain { confirm: true }
        );
        // The next job proves it at once.
        let mut p = Protocol::new(false);
        p.sent("j2");
        assert_eq!(p.next(&draining, t), Step::Wait);
        assert_eq!(p.proven(), vec!["j2".to_string()]);
        assert_eq!(p.next(&draining, t), Step::Drain { confirm: true });
        // A result not yet sent keeps the connection.
        let unsent = Now {
            unsent: true,
            ..draining
        };
        assert_eq!(Protocol::new(false).next(&unsent, t), Step::Wait);
    }

    #[test]
    fn protocol_2_announces_each_change_of_pause_once_and_drains_when_settled() {
        let t = Instant::now();
        let mut p = Protocol::new(true);
        assert_eq!(
            p.next(&paused(), t),
            Step::Send(WorkerMsg::Pause {
                reason: "on battery (42%)".into()
            })
        );
        assert_eq!(p.next(&paused(), t), Step::Wait);
        assert_eq!(p.next(&idle(), t), Step::Send(WorkerMsg::Resume));
        assert_eq!(p.next(&idle(), t), Step::Wait);
        let draining = Now {
            draining: true,
            ..idle()
        };
        assert_eq!(p.next(&draining, t), Step::Drain { confirm: false });
        let release_queued = Now {
            no_cmds: false,
            ..draining.clone()
        };
        assert_eq!(
            p.next(&release_queued, t),
            Step::Wait,
            "send the release first"
        );
        let held = Now {
            held: true,
            ..draining
        };
        assert_eq!(p.next(&held, t), Step::Wait, "until acked");
        assert!(p.proven().is_empty(), "acks prove results, not jobs");
    }

    #[test]
    fn refusals_and_hand_backs_by_protocol() {
        let legacy = Protocol::new(false);
        let v2 = Protocol::new(true);
        assert_eq!(legacy.refuse("j", "paused", false), Refusal::CloseOrHold);
        assert_eq!(legacy.refuse("j", "draining", true), Refusal::Leave);
        let release = WorkerMsg::Release {
            job_id: "j".into(),
            reason: "worker paused".into(),
        };
        assert_eq!(v2.refuse("j", "paused", false), Refusal::Send(release));
        assert_eq!(legacy.hand_back("j".into(), "disk".into()), HandBack::Close);
        assert_eq!(
            v2.hand_back("j".into(), "disk".into()),
            HandBack::Send(WorkerMsg::Release {
                job_id: "j".into(),
                reason: "disk".into()
            })
        );
    }

    #[test]
    fn a_welcome_proves_what_was_sent_and_switches_to_protocol_2() {
        let mut p = Protocol::new(false);
        p.sent("old");
        assert_eq!(p.welcomed(), vec!["old".to_string()]);
        assert!(matches!(p, Protocol::V2(_)));
        p.sent("new");
        assert!(p.proven().is_empty());
    }

    #[test]
    fn while_paused_today_only_lane_0_reconnects_and_only_when_none_is_connected() {
        assert!(Protocol::may_connect(false, 3, false, true), "open: anyone");
        assert!(!Protocol::may_connect(false, 1, true, false));
        assert!(!Protocol::may_connect(false, 0, true, true));
        assert!(
            Protocol::may_connect(false, 0, true, false),
            "keeps the session"
        );
        assert!(
            Protocol::may_connect(true, 2, true, true),
            "protocol 2: always"
        );
    }
}
