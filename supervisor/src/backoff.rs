//! One backoff for everything that waits longer after each failure: reconnects, disk
//! probes, YouTube's pause, child restarts. `first` x `factor`^n, at most `max`.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    factor: f64,
    max: Duration,
    /// Failures since the last reset.
    n: u32,
}

impl Backoff {
    pub const fn new(first: Duration, factor: f64, max: Duration) -> Backoff {
        Backoff {
            first,
            factor,
            max,
            n: 0,
        }
    }

    /// The reconnect delay (lanes, disk probes): 2 s, x1.5 per failure, at most 60 s.
    pub const fn reconnect() -> Backoff {
        Backoff::new(Duration::from_secs(2), 1.5, Duration::from_secs(60))
    }

    /// The wait after `n` failures in a row (0: the first wait).
    pub fn delay(&self, n: u32) -> Duration {
        let d = self.first.as_secs_f64() * self.factor.powi(n.min(64) as i32);
        Duration::from_secs_f64(d.min(self.max.as_secs_f64()))
    }

    /// The next wait, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.delay(self.n);
        self.n = self.n.saturating_add(1);
        d
    }

    pub fn reset(&mut self) {
        self.n = 0;
    }

    /// The delay after a connection ends. One that lasted 30 s, or over which the server
    /// did its part (a job, a welcome or an ack came), shows the server works: the next
    /// attempt comes after the shortest delay. A server that drops every connection
    /// before doing anything gets ever longer ones. (Resetting only after 30 s let a
    /// server that drops connections every 5 s push every lane to 60 s waits, stalling
    /// the worker for minutes: found by the soak.)
    pub fn after_connection(&mut self, lasted: Duration, useful: bool) -> Duration {
        if useful || lasted > Duration::from_secs(30) {
            self.reset();
        }
        self.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_on_failures_and_resets_after_a_stable_or_useful_connection() {
        let mut b = Backoff::reconnect();
        let delays: Vec<u64> = (0..12).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays[..4], [2, 3, 4, 6]);
        assert_eq!(delays[11], 60, "capped at 60 s: {delays:?}");
        // A connection dropped after 5 s that carried nothing: keep backing off.
        assert_eq!(
            b.after_connection(Duration::from_secs(5), false).as_secs(),
            60
        );
        // Dropped after 5 s, but a job came over it: the server works, come back soon.
        assert_eq!(
            b.after_connection(Duration::from_secs(5), true).as_secs(),
            2
        );
        assert_eq!(
            b.after_connection(Duration::from_secs(5), false).as_secs(),
            3
        );
        // Stable for over 30 s, even without traffic.
        assert_eq!(
            b.after_connection(Duration::from_secs(31), false).as_secs(),
            2
        );
    }

    #[test]
    fn the_child_restart_delays_are_the_ones_the_pool_used() {
        let start = Backoff::new(Duration::from_millis(500), 2.0, Duration::from_secs(10));
        let early = Backoff::new(Duration::from_millis(250), 2.0, Duration::from_secs(10));
        for n in 0..12u32 {
            let old = Duration::from_millis(500 << n.min(5)).min(Duration::from_secs(10));
            assert_eq!(start.delay(n), old, "start failure {n}");
            let old = Duration::from_millis(250 << n.min(6)).min(Duration::from_secs(10));
            assert_eq!(early.delay(n), old, "early death {n}");
        }
        let mut yt = Backoff::new(Duration::from_secs(300), 2.0, Duration::from_secs(3600));
        let waits: Vec<u64> = (0..6).map(|_| yt.next_delay().as_secs()).collect();
        assert_eq!(waits, [300, 600, 1200, 2400, 3600, 3600]);
    }
}
