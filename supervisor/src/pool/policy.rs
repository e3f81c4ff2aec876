//! What a child's death means for the job it held (`pool::reassign`).
//!
//! Policy (also in docs/ARCHITECTURE.md):
//! - deaths the job plausibly caused: a crash signal (SIGSEGV, SIGABRT, SIGBUS, SIGILL,
//!   SIGFPE...), a non-zero or unexpected exit, or the supervisor's own kill for a
//!   timeout, the memory ceiling or a lost heartbeat: the job gets **3** attempts;
//! - a SIGKILL the supervisor did not send (an operator, the kernel's OOM killer): the job
//!   gets **10** attempts, since the job is probably innocent.
//!
//! Then it fails with the last cause and the count, e.g. `child killed by SIGSEGV on 3
//! attempts`. A retried job goes to the front of the queue.

use std::time::Duration;

/// Attempts allowed when the job plausibly killed its child.
pub const CAUSED_ATTEMPTS: u32 = 3;
/// Attempts allowed when something outside killed the child.
pub const EXTERNAL_ATTEMPTS: u32 = 10;

/// Why the supervisor itself killed a child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KillReason {
    Timeout(Duration),
    Memory {
        rss_mb: u64,
        limit_mb: u64,
    },
    Heartbeat(Duration),
    /// Its connection closed or carried garbage while the process lived on.
    Disconnected,
    /// Shutdown or recycling: not the job's fault, and no job is held then.
    Routine,
}

/// How a child process ended, as the OS reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exit(i32),
    Signal(i32),
    /// The platform gave neither (should not happen).
    Unknown,
}

/// Whose fault a death was, with a description for the job's failure message.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// Plausibly the job's.
    Job(String),
    /// Something outside the process tree.
    External(String),
}

/// Classifies a death; `sent` is the supervisor's own kill, if it sent one.
pub fn classify(ending: Ending, sent: Option<KillReason>) -> Cause {
    match sent {
        Some(KillReason::Timeout(t)) => {
            return Cause::Job(format!("job timed out after {} s", t.as_secs()))
        }
        Some(KillReason::Memory { rss_mb, limit_mb }) => {
            return Cause::Job(format!(
                "child exceeded the memory limit ({rss_mb} MB > {limit_mb} MB)"
            ))
        }
        Some(KillReason::Heartbeat(t)) => {
            return Cause::Job(format!(
                "child stopped responding (no heartbeat for {} s)",
                t.as_secs()
            ))
        }
        Some(KillReason::Disconnected) => {
            return Cause::Job("child broke its IPC connection".into())
        }
        Some(KillReason::Routine) | None => {}
    }
    match ending {
        Ending::Signal(9) => Cause::External(
            "child killed by SIGKILL from outside chaarfm-super (OOM killer or operator)".into(),
        ),
        Ending::Signal(s) => Cause::Job(format!("child killed by {}", signal_name(s))),
        Ending::Exit(0) => Cause::Job("child exited during the job".into()),
        Ending::Exit(c) => Cause::Job(format!("child exited with status {c}")),
        Ending::Unknown => Cause::Job("child ended for an unknown reason".into()),
    }
}

/// Attempts a job has used, by kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempts {
    pub caused: u32,
    pub external: u32,
}

/// What to do with a job whose child died.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Retry,
    Fail(String),
}

/// Counts the death against the job and decides whether it runs again.
pub fn reassign(attempts: &mut Attempts, cause: &Cause) -> Verdict {
    let (count, limit, what) = match cause {
        Cause::Job(what) => {
            attempts.caused += 1;
            (attempts.caused, CAUSED_ATTEMPTS, what)
        }
        Cause::External(what) => {
            attempts.external += 1;
            (attempts.external, EXTERNAL_ATTEMPTS, what)
        }
    };
    if count >= limit {
        Verdict::Fail(format!("{what} on {count} attempts"))
    } else {
        Verdict::Retry
    }
}

/// `SIGSEGV` etc. for the signals a decoder crash produces; the number otherwise.
pub fn signal_name(s: i32) -> String {
    let name = match s {
        1 => "SIGHUP",
        2 => "SIGINT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        31 => "SIGSYS",
        _ => return format!("signal {s}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segfaulting_job_fails_after_three_attempts() {
        let mut a = Attempts::default();
        let cause = classify(Ending::Signal(11), None);
        assert_eq!(reassign(&mut a, &cause), Verdict::Retry);
        assert_eq!(reassign(&mut a, &cause), Verdict::Retry);
        assert_eq!(
            reassign(&mut a, &cause),
            Verdict::Fail("child killed by SIGSEGV on 3 attempts".into())
        );
    }

    #[test]
    fn outside_sigkills_allow_ten_attempts() {
        let mut a = Attempts::default();
        let cause = classify(Ending::Signal(9), None);
        for _ in 0..9 {
            assert_eq!(reassign(&mut a, &cause), Verdict::Retry);
        }
        assert!(
            matches!(reassign(&mut a, &cause), Verdict::Fail(m) if m.ends_with("on 10 attempts"))
        );
    }

    #[test]
    fn the_supervisors_own_kills_count_against_the_job() {
        let t = classify(
            Ending::Signal(9),
            Some(KillReason::Timeout(Duration::from_secs(60))),
        );
        assert_eq!(t, Cause::Job("job timed out after 60 s".into()));
        let m = classify(
            Ending::Signal(9),
            Some(KillReason::Memory {
                rss_mb: 900,
                limit_mb: 800,
            }),
        );
        assert!(matches!(m, Cause::Job(s) if s.contains("memory limit")));
        assert!(
            matches!(classify(Ending::Exit(101), None), Cause::Job(s) if s.contains("status 101"))
        );
        assert!(
            matches!(classify(Ending::Signal(6), None), Cause::Job(s) if s.contains("SIGABRT"))
        );
    }
}
