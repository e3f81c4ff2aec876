//! How many jobs to keep in hand against today's server (one job per connection), so that
//! no child waits for a download.
//!
//! By Little's law, children kept busy finish `children / E` jobs a second, `E` being one
//! job's embedding; each of those spends `D` downloading first, so `children * D / E` jobs
//! are downloading at any moment besides the `children` being embedded. Connect mode
//! starts with `children + 1` connections (one download overlapping inference) and adds
//! connections while the measured downloads say that is too few. A download over loopback
//! takes no time and keeps it at `children + 1`; one from YouTube takes seconds.
//!
//! Connections are only added, one per job measured at most, so that a few odd first jobs
//! (a short clip, a slow start) cannot open many at once: closing one of today's server's
//! connections would hand its job back, and the figures of a night do not swing fast
//! enough to be worth it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// Jobs measured before the first decision (the first downloads include yt-dlp's start).
const MIN_JOBS: u32 = 3;
/// Weight of the newest job in the moving averages.
const WEIGHT: f64 = 0.25;

/// The jobs wanted in hand, from the jobs measured so far (shared by the job tasks).
pub struct Pace {
    children: usize,
    most: usize,
    seen: Mutex<Averages>,
    wanted: watch::Sender<usize>,
}

#[derive(Default)]
struct Averages {
    jobs: u32,
    download: f64,
    embed: f64,
}

impl Pace {
    pub fn new(children: usize) -> Pace {
        let (wanted, _) = watch::channel(children + 1);
        Pace {
            children,
            most: 4 * children + 1,
            seen: Mutex::new(Averages::default()),
            wanted,
        }
    }

    /// A job was downloaded in `download` and embedded in `embed` (its wait for a child
    /// included: jobs queued for the pool mean there are enough in hand).
    pub fn observe(&self, download: Duration, embed: Duration) {
        let Ok(mut a) = self.seen.lock() else { return };
        let (d, e) = (download.as_secs_f64(), embed.as_secs_f64());
        if a.jobs == 0 {
            (a.download, a.embed) = (d, e);
        } else {
            a.download += WEIGHT * (d - a.download);
            a.embed += WEIGHT * (e - a.embed);
        }
        a.jobs = a.jobs.saturating_add(1);
        tracing::debug!(
            download = d,
            embed = e,
            avg_download = a.download,
            avg_embed = a.embed,
            "pace"
        );
        if a.jobs < MIN_JOBS {
            return;
        }
        let w = wanted(self.children, a.download, a.embed, self.most);
        self.wanted.send_if_modified(|now| {
            let more = w > *now;
            if more {
                *now += 1;
            }
            more
        });
    }

    /// The jobs wanted in hand: `children + 1` until downloads say more; never less.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.wanted.subscribe()
    }

    /// The averages behind the last decision, in seconds: (download, embedding).
    pub fn averages(&self) -> (f64, f64) {
        self.seen
            .lock()
            .map_or((0.0, 0.0), |a| (a.download, a.embed))
    }
}

/// `children + 1 + floor(children * download / embed)`, at most `most`: the `+ 1` is
/// the job in transit and the fraction Little's law leaves.
fn wanted(children: usize, download: f64, embed: f64, most: usize) -> usize {
    let least = children + 1;
    let usable = |x: f64| x.is_finite() && x > 0.0;
    if !(usable(download) && usable(embed)) {
        return least;
    }
    // An infinite ratio (a vanishing embedding) is capped like any large one.
    let extra = (children as f64 * download / embed)
        .floor()
        .min(most as f64) as usize;
    (least + extra).min(most).max(least)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn little_s_law_with_one_job_in_transit() {
        // Loopback: downloads take nothing, today's children + 1.
        assert_eq!(wanted(2, 0.0, 2.0, 9), 3);
        assert_eq!(wanted(2, 0.2, 2.0, 9), 3);
        // Downloads as long as embeddings: two more downloading.
        assert_eq!(wanted(2, 2.0, 2.0, 9), 5);
        assert_eq!(wanted(2, 2.0, 2.1, 9), 4);
        assert_eq!(wanted(1, 5.0, 1.0, 5), 5);
        // Never past the cap, whatever the figures.
        assert_eq!(wanted(2, 1000.0, 0.001, 9), 9);
        assert_eq!(
            wanted(2, 1.0, 1e-310, 9),
            9,
            "a ratio that overflows to infinity"
        );
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(wanted(2, bad, 2.0, 9), 3, "{bad}");
            assert_eq!(wanted(2, 2.0, bad, 9), 3, "{bad}");
        }
    }

    #[test]
    fn decides_after_a_few_jobs_and_only_ever_adds() {
        let p = Pace::new(2);
        let rx = p.subscribe();
        let s = Duration::from_secs;
        p.observe(s(4), s(2));
        p.observe(s(4), s(2));
        assert_eq!(*rx.borrow(), 3, "too few jobs to decide on");
        p.observe(s(4), s(2));
        assert_eq!(*rx.borrow(), 4, "one more at a time");
        for _ in 0..2 {
            p.observe(s(4), s(2));
        }
        assert_eq!(*rx.borrow(), 6);
        p.observe(s(4), s(2));
        assert_eq!(*rx.borrow(), 7, "2 + 1 + 2 * 4 / 2");
        p.observe(s(4), s(2));
        assert_eq!(*rx.borrow(), 7, "and no further");
        // Faster downloads later do not close connections.
        for _ in 0..20 {
            p.observe(s(0), s(2));
        }
        assert_eq!(*rx.borrow(), 7);
        let (d, e) = p.averages();
        // 4 s x 0.75^20 = 0.013 s: the old downloads have faded.
        assert!(d < 0.02 && (e - 2.0).abs() < 1e-9, "{d} {e}");
    }

    #[test]
    fn the_averages_follow_the_newest_jobs() {
        let p = Pace::new(1);
        let rx = p.subscribe();
        let s = Duration::from_secs;
        for _ in 0..5 {
            p.observe(s(0), s(1));
        }
        assert_eq!(*rx.borrow(), 2);
        // Downloads slow down: the average catches up within a few jobs.
        for _ in 0..6 {
            p.observe(s(3), s(1));
        }
        assert_eq!(*rx.borrow(), 4, "{:?}", p.averages());
    }
}
