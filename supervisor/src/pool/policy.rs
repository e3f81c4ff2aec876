//! What a child's death means for the job it held (`pool::reassign`).
//!
//! Policy (also in docs/ARCHITECTURE.md):
//! - deaths the job plausibly caused: a crash signal (SIGSEGV, SIGABRT, SIGBUS, SIGILL,
//!   SIGFPE...), a non-zero or unexpected exit, or the supervisor's own kill for a
//!   timeout, the memory ceiling or a lost heartbeat: the job gets **3** attempts;
//! - a SIGKILL the supervisor did not send (an operator, the kernel's OOM killer): the job
//!   gets **10** attempts, since the job is probably innocent;
//! - the supervisor's own routine kills (shutdown, recycling, the pool stopping) are never
//!   charged to a job.
//!
//! Then it fails with the last cause and the count, e.g. `child killed by SIGSEGV on 3
//! attempts`. A retried job goes to the front of the queue.

use std::fmt;
use std::time::Duration;

/// Attempts allowed when the job plausibly killed its child.
pub const CAUSED_ATTEMPTS: u32 = 3;
/// Attempts allowed when something outside killed the child.
pub const EXTERNAL_ATTEMPTS: u32 = 10;

/// Why the supervisor itself killed a child.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KillReason {
    /// Not done within `--job-timeout`.
    Timeout(Duration),
    /// No progress report for this long.
    Stalled(Duration),
    Memory {
        rss_mb: u64,
        limit_mb: u64,
    },
    /// No frame at all for this long.
    Heartbeat(Duration),
    /// Never said hello (model loaded) within this.
    HelloTimeout(Duration),
    /// Its connection closed or carried garbage while the process lived on.
    Disconnected,
    /// Shutdown: a child that was starting, or did not exit when asked.
    Shutdown,
    /// The pool stopped (see `Pool::fatal`); its job was already answered.
    PoolStopped,
}

/// How a child process ended, as the OS reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exit(i32),
    /// Killed by this signal (Unix).
    Signal(i32),
    /// The platform gave neither (should not happen).
    Unknown,
}

/// Whose fault a death was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Plausibly the job's.
    Job,
    /// Something outside the process tree.
    External,
    /// chaarfm-super's own routine kill; never charged to a job.
    Supervisor,
}

/// A child's death, typed; its text is made only when shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cause {
    pub fault: Fault,
    pub ending: Ending,
    pub kill: Option<KillReason>,
}

/// Classifies a death; `kill` is the supervisor's own kill, if it sent one.
pub fn classify(ending: Ending, kill: Option<KillReason>) -> Cause {
    let fault = match kill {
        Some(
            KillReason::Timeout(_)
            | KillReason::Stalled(_)
            | KillReason::Memory { .. }
            | KillReason::Heartbeat(_)
            | KillReason::HelloTimeout(_)
            | KillReason::Disconnected,
        ) => Fault::Job,
        Some(KillReason::Shutdown | KillReason::PoolStopped) => Fault::Supervisor,
        None if ending == Ending::Signal(SIGKILL) => Fault::External,
        None => Fault::Job,
    };
    Cause {
        fault,
        ending,
        kill,
    }
}

const SIGKILL: i32 = 9;

impl Cause {
    /// A short, fixed label for counting deaths by cause (`/metrics`).
    pub fn label(&self) -> &'static str {
        match self.kill {
            Some(KillReason::Timeout(_) | KillReason::Stalled(_)) => "timeout",
            Some(KillReason::Memory { .. }) => "memory",
            Some(KillReason::Heartbeat(_)) => "heartbeat",
            Some(KillReason::HelloTimeout(_)) => "start_timeout",
            Some(KillReason::Disconnected) => "ipc",
            Some(KillReason::Shutdown | KillReason::PoolStopped) => "stopped",
            None => match self.ending {
                Ending::Signal(SIGKILL) => "external_kill",
                Ending::Signal(_) => "crash",
                Ending::Exit(c) if ntstatus(c).is_some() => "crash",
                Ending::Exit(_) | Ending::Unknown => "exit",
            },
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kill {
            Some(KillReason::Timeout(t)) => write!(f, "job timed out after {} s", t.as_secs()),
            Some(KillReason::Stalled(t)) => write!(
                f,
                "job stalled: no progress for {} s (decoding or inference hung)",
                t.as_secs()
            ),
            Some(KillReason::Memory { rss_mb, limit_mb }) => write!(
                f,
                "child exceeded the memory limit ({rss_mb} MB > {limit_mb} MB)"
            ),
            Some(KillReason::Heartbeat(t)) => write!(
                f,
                "child stopped responding (no heartbeat for {} s)",
                t.as_secs()
            ),
            Some(KillReason::HelloTimeout(t)) => write!(
                f,
                "child did not get ready within {} s (no hello; model loading hung?)",
                t.as_secs()
            ),
            Some(KillReason::Disconnected) => f.write_str("child broke its IPC connection"),
            Some(KillReason::Shutdown) => f.write_str("child stopped by chaarfm-super (shutdown)"),
            Some(KillReason::PoolStopped) => {
                f.write_str("child stopped by chaarfm-super (the pool stopped)")
            }
            None => match self.ending {
                Ending::Signal(SIGKILL) => f.write_str(
                    "child killed by SIGKILL from outside chaarfm-super (OOM killer or operator)",
                ),
                Ending::Signal(s) => write!(f, "child killed by {}", signal_name(s)),
                Ending::Exit(0) => f.write_str("child exited during the job"),
                Ending::Exit(c) => match ntstatus(c) {
                    Some(name) => write!(f, "child crashed: {:#010X} {name}", c as u32),
                    None => write!(f, "child exited with status {c}"),
                },
                Ending::Unknown => f.write_str("child ended for an unknown reason"),
            },
        }
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
    Fail { cause: Cause, attempts: u32 },
}

impl Verdict {
    /// The failure message a job gets: `child killed by SIGSEGV on 3 attempts`.
    pub fn message(cause: &Cause, attempts: u32) -> String {
        format!("{cause} on {attempts} attempts")
    }
}

/// Counts the death against the job (unless the supervisor caused it) and decides whether
/// the job runs again.
pub fn reassign(attempts: &mut Attempts, cause: &Cause) -> Verdict {
    let (count, limit) = match cause.fault {
        Fault::Job => {
            attempts.caused += 1;
            (attempts.caused, CAUSED_ATTEMPTS)
        }
        Fault::External => {
            attempts.external += 1;
            (attempts.external, EXTERNAL_ATTEMPTS)
        }
        Fault::Supervisor => return Verdict::Retry,
    };
    if count >= limit {
        Verdict::Fail {
            cause: *cause,
            attempts: count,
        }
    } else {
        Verdict::Retry
    }
}

/// `SIGSEGV` etc. (nix's names on Unix); the number otherwise.
pub fn signal_name(s: i32) -> String {
    // Platform code here by nature: signal names exist on Unix only.
    #[cfg(unix)]
    if let Ok(sig) = nix::sys::signal::Signal::try_from(s) {
        return sig.as_str().to_string();
    }
    format!("signal {s}")
}

/// The name of a Windows exception or fatal status (an NTSTATUS of error severity,
/// `0xC.......`), which is how a crashed process exits there: `Some("access violation")`
/// for 0xC0000005. Such codes cannot be Unix exit statuses (0-255), so this is decided the
/// same way everywhere.
pub fn ntstatus(code: i32) -> Option<&'static str> {
    let code = code as u32;
    // Severity "error" and not a customer code (bit 29), so exit(-1) stays a number.
    if code & 0xE000_0000 != 0xC000_0000 {
        return None;
    }
    Some(match code {
        0xC000_0005 => "access violation",
        0xC000_001D => "illegal instruction",
        0xC000_0017 | 0xC000_012D => "out of memory",
        0xC000_0094 => "integer division by zero",
        0xC000_00FD => "stack overflow",
        0xC000_013A => "stopped by Ctrl-C",
        0xC000_0135 => "a DLL was not found",
        0xC000_0139 => "a DLL lacks an entry point (Windows or wine too old?)",
        0xC000_0142 => "a DLL failed to initialise",
        0xC000_0374 => "heap corruption",
        0xC000_0409 => "aborted (fast fail: a panic or a failed check)",
        _ => "fatal status",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail_message(v: Verdict) -> String {
        match v {
            Verdict::Fail { cause, attempts } => Verdict::message(&cause, attempts),
            Verdict::Retry => panic!("expected a failure"),
        }
    }

    #[test]
    fn a_segfaulting_job_fails_after_three_attempts() {
        let mut a = Attempts::default();
        let cause = classify(Ending::Signal(11), None);
        assert_eq!(reassign(&mut a, &cause), Verdict::Retry);
        assert_eq!(reassign(&mut a, &cause), Verdict::Retry);
        let message = fail_message(reassign(&mut a, &cause));
        assert!(message.ends_with("on 3 attempts"), "{message}");
        // Signal names are Unix's (a Windows child never ends by a signal).
        #[cfg(unix)]
        assert_eq!(message, "child killed by SIGSEGV on 3 attempts");
    }

    #[test]
    fn a_windows_crash_is_named_by_its_status_and_charged_to_the_job() {
        let mut a = Attempts::default();
        let cause = classify(Ending::Exit(0xC000_0005_u32 as i32), None);
        assert_eq!(cause.fault, Fault::Job);
        assert_eq!(cause.label(), "crash");
        assert_eq!(reassign(&mut a, &cause), Verdict::Retry);
        assert_eq!(reassign(&mut a, &cause), Verdict::Retry);
        assert_eq!(
            fail_message(reassign(&mut a, &cause)),
            "child crashed: 0xC0000005 access violation on 3 attempts"
        );
        let abort = classify(Ending::Exit(0xC000_0409_u32 as i32), None);
        assert!(abort.to_string().contains("0xC0000409 aborted"), "{abort}");
        let odd = classify(Ending::Exit(0xC0AB_CDEF_u32 as i32), None);
        assert_eq!(odd.to_string(), "child crashed: 0xC0ABCDEF fatal status");
        // Ordinary exit codes stay numbers.
        for c in [1, 101, 255, -1] {
            assert_eq!(ntstatus(c), None, "{c}");
        }
        assert_eq!(classify(Ending::Exit(3), None).label(), "exit");
    }

    #[test]
    fn outside_sigkills_allow_ten_attempts() {
        let mut a = Attempts::default();
        let cause = classify(Ending::Signal(9), None);
        assert_eq!(cause.fault, Fault::External);
        for _ in 0..9 {
            assert_eq!(reassign(&mut a, &cause), Verdict::Retry);
        }
        assert!(fail_message(reassign(&mut a, &cause)).ends_with("on 10 attempts"));
    }

    #[test]
    fn the_supervisors_own_kills_count_against_the_job() {
        let t = classify(
            Ending::Signal(9),
            Some(KillReason::Timeout(Duration::from_secs(60))),
        );
        assert_eq!(t.fault, Fault::Job);
        assert_eq!(t.to_string(), "job timed out after 60 s");
        let m = classify(
            Ending::Signal(9),
            Some(KillReason::Memory {
                rss_mb: 900,
                limit_mb: 800,
            }),
        );
        assert!(m.to_string().contains("memory limit"));
        assert!(classify(Ending::Exit(101), None)
            .to_string()
            .contains("status 101"));
        #[cfg(unix)] // signal names are Unix's
        assert!(classify(Ending::Signal(6), None)
            .to_string()
            .contains("SIGABRT"));
    }

    #[test]
    fn routine_kills_are_never_charged_nor_called_external() {
        for why in [KillReason::Shutdown, KillReason::PoolStopped] {
            let c = classify(Ending::Signal(9), Some(why));
            assert_eq!(c.fault, Fault::Supervisor);
            assert!(!c.to_string().contains("from outside"), "{c}");
            let mut a = Attempts::default();
            assert_eq!(reassign(&mut a, &c), Verdict::Retry);
            assert_eq!(a, Attempts::default());
        }
        let hello = classify(
            Ending::Signal(9),
            Some(KillReason::HelloTimeout(Duration::from_secs(60))),
        );
        assert!(hello.to_string().contains("no hello"), "{hello}");
    }
}
