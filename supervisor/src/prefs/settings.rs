//! The computing preferences (as BOINC's `global_prefs_override.xml`): what they are,
//! their defaults, and how a config file and flags make them. Flags win over the file;
//! a bad value in the file is refused with its line number.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

/// What to do on battery power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnBattery {
    /// No new jobs while on battery (the default, as BOINC's `run_on_batteries` = no).
    Pause,
    /// Work on battery too, down to `battery-min-percent`.
    Run,
}

/// A daily window of local time, `HH:MM-HH:MM`; it may cross midnight (`22:00-07:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    /// Minutes since local midnight: the window is `[start, end)`.
    pub start: u16,
    pub end: u16,
}

impl Hours {
    /// Whether `minute` (of the local day) is inside the window.
    pub fn contains(&self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

impl FromStr for Hours {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("hours {s:?}: expected HH:MM-HH:MM in local time, e.g. 22:00-07:00");
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!(
                "hours {s:?} is an empty window: leave hours empty to work at any hour"
            ));
        }
        Ok(Hours { start, end })
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (self.start, self.end);
        write!(f, "{:02}:{:02}-{:02}:{:02}", a / 60, a % 60, b / 60, b % 60)
    }
}

/// `pause-when-busy`: a percentage of the machine's CPU used by other programs, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy(pub Option<u8>);

impl FromStr for Busy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Busy(None));
        }
        match s.trim().trim_end_matches('%').parse::<u8>() {
            Ok(n) if (1..=100).contains(&n) => Ok(Busy(Some(n))),
            _ => Err(format!(
                "pause-when-busy {s:?}: expected a percentage from 1 to 100, or \"off\""
            )),
        }
    }
}

/// The preferences in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Prefs {
    pub on_battery: OnBattery,
    /// With `on-battery = "run"`: pause below this charge (resume 5 points above it).
    pub battery_min_percent: u8,
    /// Pause while other programs use more than this % of the machine's CPU.
    pub pause_when_busy: Option<u8>,
    /// Work only inside this window (None: at any hour).
    pub hours: Option<Hours>,
    /// Pause while the state dir's disk has less free space than this (0: off).
    pub min_free_disk_gb: f64,
}

impl Prefs {
    /// One line for the log: each preference as its config key says it.
    pub fn summary(&self) -> String {
        let battery = match self.on_battery {
            OnBattery::Pause => "pause".to_string(),
            OnBattery::Run => format!("run (down to {}%)", self.battery_min_percent),
        };
        format!(
            "on-battery {battery}; pause-when-busy {}; hours {}; min-free-disk-gb {}",
            self.pause_when_busy
                .map_or("off".to_string(), |n| format!("{n}%")),
            self.hours.map_or("any".to_string(), |h| h.to_string()),
            self.min_free_disk_gb
        )
    }
}

impl Default for Prefs {
    fn default() -> Self {
        Prefs {
            on_battery: OnBattery::Pause,
            battery_min_percent: 20,
            pause_when_busy: Some(25),
            hours: None,
            min_free_disk_gb: 1.0,
        }
    }
}

/// Preferences as a file or the flags give them: each one optional (unset: the next
/// source, then the default).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Layer {
    pub on_battery: Option<OnBattery>,
    #[serde(default, deserialize_with = "de::percent")]
    pub battery_min_percent: Option<u8>,
    #[serde(default, deserialize_with = "de::busy")]
    pub pause_when_busy: Option<Busy>,
    /// `Some(None)`: given empty, i.e. at any hour.
    #[serde(default, deserialize_with = "de::hours")]
    pub hours: Option<Option<Hours>>,
    #[serde(default, deserialize_with = "de::gigabytes")]
    pub min_free_disk_gb: Option<f64>,
}

impl Layer {
    /// `self` over `below`: each value set here wins.
    pub fn over(&self, below: &Layer) -> Layer {
        Layer {
            on_battery: self.on_battery.or(below.on_battery),
            battery_min_percent: self.battery_min_percent.or(below.battery_min_percent),
            pause_when_busy: self.pause_when_busy.or(below.pause_when_busy),
            hours: self.hours.or(below.hours),
            min_free_disk_gb: self.min_free_disk_gb.or(below.min_free_disk_gb),
        }
    }

    /// The preferences, defaults filling what is unset.
    pub fn prefs(&self) -> Prefs {
        let d = Prefs::default();
        Prefs {
            on_battery: self.on_battery.unwrap_or(d.on_battery),
            battery_min_percent: self.battery_min_percent.unwrap_or(d.battery_min_percent),
            pause_when_busy: self.pause_when_busy.map_or(d.pause_when_busy, |b| b.0),
            hours: self.hours.unwrap_or(d.hours),
            min_free_disk_gb: self.min_free_disk_gb.unwrap_or(d.min_free_disk_gb),
        }
    }
}

/// A config file that cannot be used: what is wrong, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is refused at line {line}: {message}")]
    Bad {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Parses a config file's text.
pub fn parse(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::Bad {
        path: path.to_path_buf(),
        line: e.span().map_or(1, |s| {
            text[..s.start.min(text.len())].lines().count().max(1)
        }),
        message: e.message().trim().to_string(),
    })
}

/// Reads the config file at `path`; a missing file is no preferences at all when
/// `required` is false (the default path), an error when it was named.
pub fn read(path: &Path, required: bool) -> Result<Layer, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Layer::default()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `$XDG_CONFIG_HOME/chaarfm-super/config.toml`, or `~/.config/...` (Windows: %APPDATA%).
pub fn default_path() -> PathBuf {
    let base = if cfg!(windows) {
        std::env::var_os("APPDATA").map(PathBuf::from)
    } else {
        std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
    };
    base.unwrap_or_else(std::env::temp_dir)
        .join("chaarfm-super")
        .join("config.toml")
}

/// The file `service install` writes: the preferences given, each key explained.
pub fn file_text(p: &Prefs) -> String {
    let busy = p
        .pause_when_busy
        .map_or("\"off\"".to_string(), |n| n.to_string());
    let hours = p.hours.map_or(String::new(), |h| h.to_string());
    let on_battery = match p.on_battery {
        OnBattery::Pause => "pause",
        OnBattery::Run => "run",
    };
    format!(
        "# chaarfm-super's computing preferences. Edit and save: the worker reads this file\n\
         # again within seconds (or on SIGHUP). Flags given to the worker win over it.\n\
         \n\
         # \"pause\": no new jobs on battery power; \"run\": work on battery too.\n\
         on-battery = \"{on_battery}\"\n\
         # With on-battery = \"run\": pause below this charge (resume 5 points above it).\n\
         battery-min-percent = {}\n\
         # Pause while other programs use more than this % of the CPU for a minute\n\
         # (resume after 2 minutes below it); \"off\" never pauses for that.\n\
         pause-when-busy = {busy}\n\
         # Work only between these local times, e.g. \"22:00-07:00\"; empty: at any hour.\n\
         hours = \"{hours}\"\n\
         # Pause while the state dir's disk has less free space than this (GB; 0: off).\n\
         min-free-disk-gb = {}\n",
        p.battery_min_percent, p.min_free_disk_gb
    )
}

/// Value checks, run inside the TOML parser so that an error carries its line.
mod de {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    use crate::prefs::settings::{Busy, Hours};

    pub fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
        let n = i64::deserialize(d)?;
        u8::try_from(n)
            .ok()
            .filter(|n| *n <= 100)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not a percentage (0 to 100)")))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(i64),
        Text(String),
    }

    pub fn busy<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Busy>, D::Error> {
        let text = match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => n.to_string(),
            NumberOrText::Text(t) => t,
        };
        text.parse().map(Some).map_err(D::Error::custom)
    }

    pub fn hours<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Hours>>, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(Some(None));
        }
        s.parse().map(|h| Some(Some(h))).map_err(D::Error::custom)
    }

    pub fn gigabytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let g = match NumberOrFloat::deserialize(d)? {
            NumberOrFloat::Int(n) => n as f64,
            NumberOrFloat::Float(f) => f,
        };
        if g.is_finite() && g >= 0.0 {
            Ok(Some(g))
        } else {
            Err(D::Error::custom(format!(
                "{g} is not a size in GB (0 or more)"
            )))
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrFloat {
        Int(i64),
        Float(f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Layer, ConfigError> {
        parse(Path::new("config.toml"), text)
    }

    #[test]
    fn hours_parse_print_and_contain_across_midnight() {
        let night: Hours = "22:00-07:00".parse().unwrap();
        assert_eq!(night.to_string(), "22:00-07:00");
        for (m, inside) in [
            (21 * 60 + 59, false),
            (22 * 60, true),
            (0, true),
            (6 * 60 + 59, true),
            (7 * 60, false),
            (12 * 60, false),
        ] {
            assert_eq!(night.contains(m), inside, "minute {m}");
        }
        let day: Hours = "09:30-17:00".parse().unwrap();
        assert!(day.contains(9 * 60 + 30) && !day.contains(17 * 60) && !day.contains(0));
        for bad in [
            "22-07",
            "24:00-07:00",
            "22:00",
            "22:60-07:00",
            "07:00-07:00",
            "7:00-8:00",
        ] {
            assert!(bad.parse::<Hours>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_file_sets_each_key_and_flags_win() {
        let file = p("on-battery = \"run\"\nbattery-min-percent = 50\npause-when-busy = \"off\"\nhours = \"22:00-07:00\"\nmin-free-disk-gb = 2.5\n").unwrap();
        let prefs = file.prefs();
        assert_eq!(
            prefs,
            Prefs {
                on_battery: OnBattery::Run,
                battery_min_percent: 50,
                pause_when_busy: None,
                hours: Some("22:00-07:00".parse().unwrap()),
                min_free_disk_gb: 2.5,
            }
        );
        let flags = Layer {
            pause_when_busy: Some(Busy(Some(40))),
            hours: Some(None),
            ..Layer::default()
        };
        let both = flags.over(&file).prefs();
        assert_eq!(both.pause_when_busy, Some(40));
        assert_eq!(both.hours, None);
        assert_eq!(both.on_battery, OnBattery::Run);
        assert_eq!(Layer::default().prefs(), Prefs::default());
        assert_eq!(
            p("pause-when-busy = 30\nmin-free-disk-gb = 3")
                .unwrap()
                .prefs()
                .min_free_disk_gb,
            3.0
        );
    }

    #[test]
    fn a_bad_value_is_refused_with_its_line() {
        for (text, line, says) in [
            (
                "on-battery = \"run\"\nhours = \"25:00-07:00\"\n",
                2,
                "HH:MM-HH:MM",
            ),
            ("\n\npause-when-busy = 300\n", 3, "percentage"),
            ("on-battery = \"sometimes\"\n", 1, "pause"),
            ("min-free-disk-gb = -1\n", 1, "0 or more"),
            ("battery-min-percent = 101\n", 1, "percentage"),
            ("on-batery = \"run\"\n", 1, "unknown field"),
            ("hours = 22\n", 1, "string"),
        ] {
            let e = p(text).unwrap_err();
            let ConfigError::Bad {
                line: l, message, ..
            } = &e
            else {
                panic!("{e}");
            };
            assert_eq!(*l, line, "{text:?}: {e}");
            assert!(message.contains(says), "{text:?}: {e}");
            assert!(e.to_string().contains(&format!("line {line}")), "{e}");
        }
    }

    #[test]
    fn the_file_service_install_writes_reads_back_as_the_same_preferences() {
        for prefs in [
            Prefs::default(),
            Prefs {
                on_battery: OnBattery::Run,
                battery_min_percent: 35,
                pause_when_busy: None,
                hours: Some("22:00-07:00".parse().unwrap()),
                min_free_disk_gb: 0.5,
            },
        ] {
            assert_eq!(p(&file_text(&prefs)).unwrap().prefs(), prefs);
        }
        assert!(read(Path::new("/nonexistent/chaarfm.toml"), false).is_ok());
        assert!(matches!(
            read(Path::new("/nonexistent/chaarfm.toml"), true),
            Err(ConfigError::Read { .. })
        ));
    }
}
