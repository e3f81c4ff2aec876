//! The preferences at work: [`Decider`] holds the preferences in force and the last
//! decision, and publishes the pause it wants; [`run`] reads the machine on a timer
//! (power and the clock every 2 s, other programs' CPU every 6 s, the disk every 60 s)
//! and re-reads the config file when it changes or on SIGHUP. Each change of state is
//! logged once, with its reason.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::decide::{self, Pause, Readings, State};
use super::load::Load;
use super::settings::{self, ConfigError, Layer, Prefs};

/// Power and hours are read this often; the others on multiples of it.
const TICK: Duration = Duration::from_secs(2);
const CPU_EVERY: u32 = 3; // ~6 s: sysinfo needs a gap between samples.
const DISK_EVERY: u32 = 30; // 60 s

/// Where the preferences come from: the flags over a config file.
#[derive(Debug, Clone)]
pub struct Source {
    pub flags: Layer,
    pub path: PathBuf,
    /// Named on the command line: it must exist.
    pub required: bool,
}

impl Source {
    /// The preferences now; a bad file is an error that names its line.
    pub fn load(&self) -> Result<Prefs, ConfigError> {
        Ok(self
            .flags
            .over(&settings::read(&self.path, self.required)?)
            .prefs())
    }

    fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }
}

/// The preferences in force and what they decide.
pub struct Decider {
    inner: Mutex<(Prefs, State)>,
    out: watch::Sender<Option<Pause>>,
    origin: Instant,
    /// The disk `min-free-disk-gb` is about.
    disk: PathBuf,
}

impl Decider {
    pub fn new(prefs: Prefs, disk: &Path) -> Decider {
        Decider {
            inner: Mutex::new((prefs, State::default())),
            out: watch::channel(None).0,
            origin: Instant::now(),
            disk: disk.to_path_buf(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Prefs, State)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether other programs' CPU is to be read (`pause-when-busy` is not off).
    fn watches_cpu(&self) -> bool {
        self.lock().0.pause_when_busy.is_some()
    }

    /// What the preferences want now, with the reason's latest figures.
    pub fn pause(&self) -> Option<Pause> {
        self.lock().1.pause.clone()
    }

    /// Changes of the wanted pause (published on a change of reason, not of figures).
    pub fn subscribe(&self) -> watch::Receiver<Option<Pause>> {
        self.out.subscribe()
    }

    /// Decides again with `r`; returns the pause wanted now.
    pub fn observe(&self, r: &Readings) -> Option<Pause> {
        let mut g = self.lock();
        let now = self.origin.elapsed();
        let next = decide::next(&g.0, r, &g.1, now);
        let (was, is) = (g.1.pause.clone(), next.pause.clone());
        if was.as_ref().map(|p| p.label) != is.as_ref().map(|p| p.label) {
            match (&was, &is) {
                (_, Some(p)) => {
                    tracing::warn!("paused: {} (no new jobs; those in flight finish)", p.reason)
                }
                (Some(w), None) => tracing::info!("resumed: {}", decide::resumed(w, &g.0, &next)),
                (None, None) => {}
            }
            // Stored even before anyone subscribes (the first decision, at start).
            self.out.send_replace(is.clone());
        }
        g.1 = next;
        is
    }

    /// New preferences (the file changed): logged, and decided again at once.
    pub fn set_prefs(&self, prefs: Prefs) {
        {
            let mut g = self.lock();
            if g.0 == prefs {
                return;
            }
            tracing::info!(?prefs, "preferences changed");
            g.0 = prefs;
        }
        self.observe(&Readings::default());
    }

    /// Before a download: the disk's free space now. The pause wanted, if it is low.
    pub fn check_disk(&self) -> Option<Pause> {
        let free = crate::os::free_bytes(&self.disk);
        let p = self.observe(&Readings {
            free_disk: free,
            ..Readings::default()
        });
        p.filter(|p| p.label == "disk_space")
    }
}

/// Reads the machine and the config file until the task is dropped.
pub async fn run(decider: Arc<Decider>, source: Source, mut hangups: crate::signals::Hangups) {
    // Made on the first CPU reading, dropped while `pause-when-busy` is off.
    let mut load: Option<Load> = None;
    let mut seen = source.modified();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        let reread = tokio::select! {
            _ = tick.tick() => {
                let m = source.modified();
                let changed = m != seen;
                seen = m;
                changed
            }
            () = hangups.next() => {
                tracing::info!("SIGHUP: reading the preferences again");
                true
            }
        };
        if reread {
            match source.load() {
                Ok(p) => decider.set_prefs(p),
                Err(e) => tracing::error!("{e}; the preferences in force are kept"),
            }
        }
        let (cpu_now, disk_now) = (n % CPU_EVERY == CPU_EVERY - 1, n.is_multiple_of(DISK_EVERY));
        n = n.wrapping_add(1);
        let disk = decider.disk.clone();
        let watches_cpu = decider.watches_cpu();
        if !watches_cpu {
            load = None;
        }
        let cpu_now = cpu_now && watches_cpu;
        let mut sampler = if cpu_now { load.take() } else { None };
        let read = tokio::task::spawn_blocking(move || {
            let others_cpu = match &mut sampler {
                Some(s) => Some(s.sample()),
                None if cpu_now => {
                    // A baseline: the next sample covers the time since.
                    sampler = Some(Load::new());
                    None
                }
                None => None,
            };
            let r = Readings {
                power: Some(super::power::read()),
                others_cpu,
                free_disk: if disk_now {
                    crate::os::free_bytes(&disk)
                } else {
                    None
                },
                minute: Some(crate::clock::local_minute()),
            };
            (r, sampler)
        })
        .await;
        if let Ok((r, sampler)) = read {
            if sampler.is_some() {
                load = sampler;
            }
            decider.observe(&r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefs::decide::Power;

    fn power(p: Power) -> Readings {
        Readings {
            power: Some(p),
            ..Readings::default()
        }
    }

    #[test]
    fn a_decision_is_published_before_anyone_listens_and_only_on_a_change_of_reason() {
        let d = Decider::new(Prefs::default(), Path::new("."));
        // At start nobody subscribes yet: the first decision must still be kept.
        d.observe(&power(Power::Battery(Some(42))));
        let mut rx = d.subscribe();
        let first = rx.borrow_and_update().clone();
        assert_eq!(first.map(|p| p.reason), Some("on battery (42%)".into()));
        // A new figure is not a new decision for the listeners, but `pause` has it.
        d.observe(&power(Power::Battery(Some(41))));
        assert!(!rx.has_changed().unwrap());
        assert_eq!(d.pause().map(|p| p.reason), Some("on battery (41%)".into()));
        d.observe(&power(Power::Mains));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), None);
        // New preferences decide again at once, with the last readings.
        d.observe(&power(Power::Battery(Some(42))));
        assert!(rx.borrow_and_update().is_some());
        d.set_prefs(Prefs {
            on_battery: crate::prefs::settings::OnBattery::Run,
            ..Prefs::default()
        });
        assert_eq!(*rx.borrow_and_update(), None);
    }

    #[test]
    fn the_source_puts_the_flags_over_the_file_and_a_named_file_must_exist() {
        let dir = std::env::temp_dir().join(format!("chaarfm-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "hours = \"22:00-07:00\"\npause-when-busy = 50\n").unwrap();
        let flags = Layer {
            pause_when_busy: Some(settings::Busy(None)),
            ..Layer::default()
        };
        let src = Source {
            flags,
            path: path.clone(),
            required: true,
        };
        let p = src.load().unwrap();
        assert_eq!(p.pause_when_busy, None, "the flag wins");
        assert_eq!(
            p.hours.map(|h| h.to_string()).as_deref(),
            Some("22:00-07:00")
        );
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(src.load(), Err(ConfigError::Read { .. })));
        let optional = Source {
            required: false,
            ..src
        };
        assert_eq!(optional.load().unwrap().pause_when_busy, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
