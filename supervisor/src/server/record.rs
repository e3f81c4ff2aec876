//! What a person reads in the morning (`status`, the page at `GET /`): tracks stored per
//! hour over the last day, today and in all, and the last failures with their reasons.
//! Kept in `<state_dir>/history.json` across runs (saved every minute and at exit).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Hours of counts kept (the page shows the last 24).
const KEEP_HOURS: u64 = 48;
/// Failures kept with their reasons.
const KEEP_FAILURES: usize = 3;

/// One failure as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub job: String,
    pub reason: String,
    /// Unix time.
    pub at: u64,
}

/// The counts, as saved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Tracks stored and failed, in all runs.
    pub done: u64,
    pub failed: u64,
    /// Unix time of the local midnight that began "today", and today's counts.
    pub today_start: i64,
    pub today_done: u64,
    pub today_failed: u64,
    /// (unix hour, tracks stored in it), oldest first.
    pub hours: Vec<(u64, u64)>,
    /// The last failures, newest last.
    pub failures: Vec<Failure>,
}

impl History {
    /// A new local day (`midnight`) starts today's counts again.
    fn day(&mut self, midnight: i64) {
        if self.today_start != midnight {
            self.today_start = midnight;
            self.today_done = 0;
            self.today_failed = 0;
        }
    }

    /// A track stored at `now` (unix time), on the local day that began at `midnight`.
    pub fn stored(&mut self, now: u64, midnight: i64) {
        self.day(midnight);
        self.done += 1;
        self.today_done += 1;
        let hour = now / 3600;
        match self.hours.last_mut() {
            Some((h, n)) if *h == hour => *n += 1,
            _ => self.hours.push((hour, 1)),
        }
        self.hours.retain(|(h, _)| h + KEEP_HOURS > hour);
    }

    /// A track that failed (its own fault) at `now`.
    pub fn failed(&mut self, job: &str, reason: &str, now: u64, midnight: i64) {
        self.day(midnight);
        self.failed += 1;
        self.today_failed += 1;
        self.failures.push(Failure {
            job: job.to_string(),
            reason: reason.chars().take(300).collect(),
            at: now,
        });
        let extra = self.failures.len().saturating_sub(KEEP_FAILURES);
        self.failures.drain(..extra);
    }

    /// Tracks stored in each of the 24 hours up to `now`'s, oldest first.
    pub fn per_hour(&self, now: u64) -> [u64; 24] {
        let hour = now / 3600;
        let mut out = [0; 24];
        for (h, n) in &self.hours {
            if let Some(ago) = hour.checked_sub(*h).filter(|a| *a < 24) {
                out[23 - ago as usize] += n;
            }
        }
        out
    }

    /// Today's counts as of `midnight` (zero once a new day began).
    pub fn today(&self, midnight: i64) -> (u64, u64) {
        if self.today_start == midnight {
            (self.today_done, self.today_failed)
        } else {
            (0, 0)
        }
    }
}

/// The history of this state dir, shared by the hub (which counts) and `status`.
pub struct Record {
    path: PathBuf,
    history: Mutex<History>,
    /// The state now (`report::track`'s key) and since when (unix time): this run's.
    state: Mutex<(String, u64)>,
}

impl Record {
    /// Reads `<state_dir>/history.json`; an unreadable one starts afresh, with a warning.
    pub fn open(state_dir: &Path) -> Record {
        let path = state_dir.join("history.json");
        let history = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "the history of tracks done cannot be read; starting it again");
                History::default()
            }),
            Err(_) => History::default(),
        };
        Record {
            path,
            history: Mutex::new(history),
            state: Mutex::new((String::new(), crate::date::unix_now())),
        }
    }

    /// The state is `key` now: since when it has been (now, if it just changed).
    pub fn mark(&self, key: &str) -> u64 {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 != key {
            *g = (key.to_string(), crate::date::unix_now());
        }
        g.1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn history(&self) -> History {
        self.lock().clone()
    }

    pub fn stored(&self) {
        self.lock()
            .stored(crate::date::unix_now(), crate::clock::local_midnight());
    }

    pub fn failed(&self, job: &str, reason: &str) {
        self.lock().failed(
            job,
            reason,
            crate::date::unix_now(),
            crate::clock::local_midnight(),
        );
    }

    /// Writes the history (whole, then renamed over the old one).
    pub fn save(&self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&*self.lock()).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_days_and_failures_are_counted_and_bounded() {
        let mut h = History::default();
        let t0 = 1_790_000_000 / 3600 * 3600; // the start of an hour
        h.stored(t0 + 10, 100);
        h.stored(t0 + 20, 100);
        h.stored(t0 + 3600, 100);
        let ph = h.per_hour(t0 + 3600 + 5);
        assert_eq!((ph[22], ph[23]), (2, 1));
        assert_eq!(ph.iter().sum::<u64>(), 3);
        // 24 hours on, the first hour has left the chart; 48 on, the record.
        let later = h.per_hour(t0 + 24 * 3600);
        assert_eq!((later[0], later.iter().sum::<u64>()), (1, 1));
        h.stored(t0 + 48 * 3600, 200);
        assert_eq!(h.hours, vec![(t0 / 3600 + 1, 1), (t0 / 3600 + 48, 1)]);
        // A new day starts today's counts again; the total goes on.
        assert_eq!(h.today(100), (0, 0));
        assert_eq!(h.today(200), (1, 0));
        assert_eq!(h.done, 4);
        for i in 0..5 {
            h.failed(&format!("j{i}"), "unsupported", t0 + i, 200);
        }
        let jobs: Vec<&str> = h.failures.iter().map(|f| f.job.as_str()).collect();
        assert_eq!(jobs, ["j2", "j3", "j4"]);
        assert_eq!((h.failed, h.today(200)), (5, (1, 5)));
    }

    #[test]
    fn the_record_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("chaarfm-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Record::open(&dir);
        r.stored();
        r.failed("j1", "no audio stream");
        r.save().unwrap();
        let again = Record::open(&dir).history();
        assert_eq!((again.done, again.failed), (1, 1));
        assert_eq!(again.failures[0].reason, "no audio stream");
        std::fs::write(dir.join("history.json"), b"{oops").unwrap();
        assert_eq!(Record::open(&dir).history(), History::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
