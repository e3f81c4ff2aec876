//! Whether the preferences pause the worker now: a pure function of (preferences,
//! readings, previous state, time), so every rule is tested without a machine or clock.
//!
//! Each threshold has hysteresis, so a reading hovering around it does not flap the
//! worker (BOINC issue 5310): a battery pauses below its floor and resumes 5 points
//! above it; other programs must keep the CPU busy for [`BUSY_FOR`] to pause and quiet
//! for [`QUIET_FOR`] to resume; a disk resumes with a margin above its minimum.
//! Power and hours need none: back on mains or inside the hours, work resumes at once.

use std::time::Duration;

use super::settings::{OnBattery, Prefs};

/// Other programs above `pause-when-busy` for this long pause the worker...
pub const BUSY_FOR: Duration = Duration::from_secs(60);
/// ...and below it for this long resume it.
pub const QUIET_FOR: Duration = Duration::from_secs(120);
/// With `on-battery = "run"`: the charge must climb this far above the floor to resume.
const BATTERY_BAND: u8 = 5;

/// Where the power comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Mains, or no battery at all.
    Mains,
    /// Discharging; its charge when known.
    Battery(Option<u8>),
}

/// What was read this time; `None`: not read now (each reading has its own period).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Readings {
    pub power: Option<Power>,
    /// % of the machine's CPU used by processes other than ours.
    pub others_cpu: Option<f32>,
    /// Free bytes on the state dir's disk.
    pub free_disk: Option<u64>,
    /// Minutes since local midnight.
    pub minute: Option<u16>,
}

/// Why the worker is paused: the `reason` label of `chaarfm_paused` and the words
/// shown in the log, the status line and `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    pub label: &'static str,
    pub reason: String,
}

/// What one decision remembers for the next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    power: Option<Power>,
    minute: Option<u16>,
    free_disk: Option<u64>,
    others_cpu: Option<f32>,
    /// Paused by the battery floor (`on-battery = "run"`).
    battery_low: bool,
    disk_low: bool,
    /// Since when other programs have been above the threshold / below it.
    busy_since: Option<Duration>,
    quiet_since: Option<Duration>,
    busy: bool,
    /// The decision.
    pub pause: Option<Pause>,
}

const GB: f64 = 1e9;

/// The next state after `r`, read at `now` (any monotonic origin).
pub fn next(prefs: &Prefs, r: &Readings, prev: &State, now: Duration) -> State {
    let mut s = State {
        power: r.power.or(prev.power),
        minute: r.minute.or(prev.minute),
        free_disk: r.free_disk.or(prev.free_disk),
        others_cpu: r.others_cpu.or(prev.others_cpu),
        pause: None,
        ..prev.clone()
    };
    // The battery floor, with its band.
    s.battery_low = match (prefs.on_battery, s.power) {
        (OnBattery::Run, Some(Power::Battery(Some(pct)))) => {
            let floor = prefs.battery_min_percent;
            if prev.battery_low {
                pct < floor.saturating_add(BATTERY_BAND)
            } else {
                pct < floor
            }
        }
        _ => false,
    };
    // The disk's minimum, with a margin of 10% (at least 0.25 GB) to resume.
    let min = prefs.min_free_disk_gb * GB;
    s.disk_low = match s.free_disk {
        Some(free) if min > 0.0 => {
            let free = free as f64;
            if prev.disk_low {
                free < min + (min * 0.1).max(0.25 * GB)
            } else {
                free < min
            }
        }
        _ => false,
    };
    // Other programs' CPU: only a new sample moves the clocks.
    match (prefs.pause_when_busy, r.others_cpu) {
        (None, _) => {
            s.busy = false;
            s.busy_since = None;
            s.quiet_since = None;
        }
        (Some(limit), Some(cpu)) => {
            if cpu > f32::from(limit) {
                s.quiet_since = None;
                let since = *s.busy_since.get_or_insert(now);
                if now.saturating_sub(since) >= BUSY_FOR {
                    s.busy = true;
                }
            } else {
                s.busy_since = None;
                let since = *s.quiet_since.get_or_insert(now);
                if now.saturating_sub(since) >= QUIET_FOR {
                    s.busy = false;
                }
            }
        }
        (Some(_), None) => {}
    }
    s.pause = reason(prefs, &s);
    s
}

/// The first reason that holds, most lasting first.
fn reason(prefs: &Prefs, s: &State) -> Option<Pause> {
    let pause = |label, reason: String| Some(Pause { label, reason });
    if let Some(Power::Battery(pct)) = s.power {
        let charge = pct.map(|p| format!(" ({p}%)")).unwrap_or_default();
        if prefs.on_battery == OnBattery::Pause {
            return pause("battery", format!("on battery{charge}"));
        }
        if s.battery_low {
            return pause(
                "battery",
                format!("battery low{charge}, below {}%", prefs.battery_min_percent),
            );
        }
    }
    if let (Some(h), Some(m)) = (prefs.hours, s.minute) {
        if !h.contains(m) {
            return pause("hours", format!("outside hours {h}"));
        }
    }
    if s.disk_low {
        return pause(
            "disk_space",
            format!(
                "{:.1} GB free on the state dir's disk, below {} GB",
                s.free_disk.unwrap_or(0) as f64 / GB,
                prefs.min_free_disk_gb
            ),
        );
    }
    if s.busy {
        if let Some(limit) = prefs.pause_when_busy {
            return pause(
                "busy",
                format!(
                    "other programs use {:.0}% of the CPU (over {limit}%)",
                    s.others_cpu.unwrap_or(0.0)
                ),
            );
        }
    }
    None
}

/// What a resume says: why the pause `was` no longer holds.
pub fn resumed(was: &Pause, prefs: &Prefs, s: &State) -> String {
    match was.label {
        "battery" => match s.power {
            Some(Power::Battery(Some(p))) => format!("battery at {p}%"),
            Some(Power::Battery(None)) => "running on battery allowed".into(),
            _ => "on mains".into(),
        },
        "hours" => match prefs.hours {
            Some(h) => format!("within hours {h}"),
            None => "no hours set".into(),
        },
        "disk_space" => format!(
            "{:.1} GB free on the state dir's disk",
            s.free_disk.unwrap_or(0) as f64 / GB
        ),
        _ => format!(
            "other programs use {:.0}% of the CPU",
            s.others_cpu.unwrap_or(0.0)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefs::settings::Hours;

    fn run(prefs: &Prefs, steps: &[(u64, Readings)]) -> Vec<Option<&'static str>> {
        let mut s = State::default();
        steps
            .iter()
            .map(|(t, r)| {
                s = next(prefs, r, &s, Duration::from_secs(*t));
                s.pause.as_ref().map(|p| p.label)
            })
            .collect()
    }

    fn power(p: Power) -> Readings {
        Readings {
            power: Some(p),
            ..Readings::default()
        }
    }

    fn cpu(c: f32) -> Readings {
        Readings {
            others_cpu: Some(c),
            ..Readings::default()
        }
    }

    #[test]
    fn on_battery_pauses_by_default_and_mains_resumes_at_once() {
        let prefs = Prefs::default();
        let mut s = next(
            &prefs,
            &power(Power::Battery(Some(42))),
            &State::default(),
            Duration::ZERO,
        );
        let p = s.pause.clone().unwrap();
        assert_eq!(
            (p.label, p.reason.as_str()),
            ("battery", "on battery (42%)")
        );
        s = next(&prefs, &power(Power::Mains), &s, Duration::from_secs(1));
        assert_eq!(s.pause, None);
        assert_eq!(resumed(&p, &prefs, &s), "on mains");
        // A reading of something else keeps the last power reading.
        let s = next(
            &prefs,
            &cpu(0.0),
            &next(
                &prefs,
                &power(Power::Battery(None)),
                &s,
                Duration::from_secs(2),
            ),
            Duration::from_secs(3),
        );
        assert_eq!(s.pause.unwrap().reason, "on battery");
    }

    #[test]
    fn a_battery_hovering_at_the_floor_does_not_flap() {
        let prefs = Prefs {
            on_battery: OnBattery::Run,
            battery_min_percent: 80,
            ..Prefs::default()
        };
        let steps: Vec<(u64, Readings)> = [81, 79, 81, 79, 81, 84, 85, 84, 81]
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64, power(Power::Battery(Some(*p)))))
            .collect();
        let got = run(&prefs, &steps);
        let b = Some("battery");
        assert_eq!(got, vec![None, b, b, b, b, b, None, None, None]);
        assert_eq!(
            run(
                &prefs,
                &[
                    (0, power(Power::Battery(Some(79)))),
                    (1, power(Power::Mains))
                ]
            ),
            vec![b, None]
        );
    }

    #[test]
    fn a_thirty_second_busy_spike_does_not_pause_a_minute_does() {
        let prefs = Prefs::default(); // 25%
                                      // Every 5 s: 30 s at 90%, then quiet.
        let spike: Vec<(u64, Readings)> = (0..40u64)
            .map(|i| (i * 5, cpu(if i * 5 < 30 { 90.0 } else { 3.0 })))
            .collect();
        assert!(run(&prefs, &spike).iter().all(Option::is_none));
        // A minute and more at 60%: paused at 60 s, and a short lull does not resume it.
        let mut steps: Vec<(u64, Readings)> = (0..=12u64).map(|i| (i * 5, cpu(60.0))).collect();
        steps.extend((13..=20u64).map(|i| (i * 5, cpu(5.0)))); // 65..100 s quiet: 35 s
        steps.extend((21..=24u64).map(|i| (i * 5, cpu(70.0))));
        steps.extend((25..=49u64).map(|i| (i * 5, cpu(5.0)))); // from 125 s quiet
        let got = run(&prefs, &steps);
        assert!(got[..12].iter().all(Option::is_none), "{got:?}");
        assert_eq!(got[12], Some("busy"));
        let resumed_at = got.iter().rposition(|g| g.is_some()).unwrap() + 1;
        // Quiet from 125 s: resumed at 245 s, 2 minutes later, not before.
        assert_eq!(steps[resumed_at].0, 245, "{got:?}");
        assert!(got[12..resumed_at].iter().all(|g| *g == Some("busy")));
        // Off: never.
        let off = Prefs {
            pause_when_busy: None,
            ..Prefs::default()
        };
        assert!(run(&off, &steps).iter().all(Option::is_none));
    }

    #[test]
    fn hours_pause_outside_the_window_and_say_which() {
        let prefs = Prefs {
            hours: Some("22:00-07:00".parse::<Hours>().unwrap()),
            ..Prefs::default()
        };
        let at = |m: u16| Readings {
            minute: Some(m),
            ..Readings::default()
        };
        let got = run(
            &prefs,
            &[
                (0, at(21 * 60 + 59)),
                (1, at(22 * 60)),
                (2, at(3 * 60)),
                (3, at(7 * 60)),
            ],
        );
        assert_eq!(got, vec![Some("hours"), None, None, Some("hours")]);
        let s = next(&prefs, &at(12 * 60), &State::default(), Duration::ZERO);
        assert_eq!(s.pause.unwrap().reason, "outside hours 22:00-07:00");
    }

    #[test]
    fn the_disk_pauses_below_its_minimum_and_resumes_with_a_margin() {
        let prefs = Prefs::default(); // 1 GB
        let disk = |gb: f64| Readings {
            free_disk: Some((gb * GB) as u64),
            ..Readings::default()
        };
        let got = run(
            &prefs,
            &[
                (0, disk(1.1)),
                (1, disk(0.9)),
                (2, disk(1.1)),
                (3, disk(1.2)),
                (4, disk(1.3)),
                (5, disk(1.1)),
            ],
        );
        let d = Some("disk_space");
        assert_eq!(got, vec![None, d, d, d, None, None]);
        let off = Prefs {
            min_free_disk_gb: 0.0,
            ..Prefs::default()
        };
        assert_eq!(run(&off, &[(0, disk(0.0))]), vec![None]);
    }

    #[test]
    fn the_most_lasting_reason_is_shown_first() {
        let prefs = Prefs {
            hours: Some("22:00-07:00".parse::<Hours>().unwrap()),
            ..Prefs::default()
        };
        let r = Readings {
            power: Some(Power::Battery(Some(50))),
            minute: Some(12 * 60),
            free_disk: Some(0),
            others_cpu: Some(0.0),
        };
        let s = next(&prefs, &r, &State::default(), Duration::ZERO);
        assert_eq!(s.pause.as_ref().unwrap().label, "battery");
        let s = next(&prefs, &power(Power::Mains), &s, Duration::from_secs(1));
        assert_eq!(s.pause.as_ref().unwrap().label, "hours");
    }
}
