//! Where the power comes from: Linux's `/sys/class/power_supply` (its root from
//! `CHAARFM_POWER_SUPPLY_DIR` when set, on any OS: the tests' fake one), macOS's
//! `pmset -g batt`, Windows' `GetSystemPowerStatus` (through `os`). No battery at all,
//! or nothing readable, is mains: a desktop never pauses for power.

use std::path::Path;

use super::decide::Power;

/// The power source now. Blocking (macOS runs `pmset`): call off the async threads.
pub fn read() -> Power {
    if let Some(root) = std::env::var_os("CHAARFM_POWER_SUPPLY_DIR") {
        return sysfs(Path::new(&root));
    }
    // Platform choice by nature: each OS has its own power source API.
    if cfg!(target_os = "macos") {
        return std::process::Command::new("pmset")
            .args(["-g", "batt"])
            .output()
            .ok()
            .map_or(Power::Mains, |o| pmset(&String::from_utf8_lossy(&o.stdout)));
    }
    if cfg!(windows) {
        return match crate::os::system_power() {
            Some((false, pct)) => Power::Battery(pct),
            _ => Power::Mains,
        };
    }
    sysfs(Path::new("/sys/class/power_supply"))
}

fn text(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Linux: a `Mains`/`USB` supply online is mains; else a `Battery` discharging is
/// battery (with its `capacity`); else mains.
pub fn sysfs(root: &Path) -> Power {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Power::Mains;
    };
    let mut battery = None;
    for e in entries.flatten() {
        let dir = e.path();
        match text(&dir, "type").as_deref() {
            Some("Mains" | "USB") if text(&dir, "online").as_deref() == Some("1") => {
                return Power::Mains;
            }
            Some("Battery") if text(&dir, "status").as_deref() == Some("Discharging") => {
                let pct = text(&dir, "capacity").and_then(|c| c.parse::<u8>().ok());
                battery = Some(Power::Battery(pct.map(|p| p.min(100))));
            }
            _ => {}
        }
    }
    battery.unwrap_or(Power::Mains)
}

/// macOS: `Now drawing from 'Battery Power'`, then ` -InternalBattery-0 ... 81%; ...`.
pub fn pmset(out: &str) -> Power {
    if !out.contains("'Battery Power'") {
        return Power::Mains;
    }
    let pct = out.lines().find_map(|l| {
        let l = l.trim_start();
        l.starts_with("-InternalBattery").then(|| {
            l.split(|c: char| c.is_whitespace() || c == ';')
                .find_map(|w| w.strip_suffix('%')?.parse::<u8>().ok())
        })?
    });
    Power::Battery(pct)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A supply: its name, type and other files.
    type Supply<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

    /// A fake `/sys/class/power_supply` with these supplies.
    pub fn fake(dir: &Path, supplies: &[Supply<'_>]) {
        let _ = std::fs::remove_dir_all(dir);
        for (name, kind, files) in supplies {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            for (f, v) in *files {
                std::fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        }
    }

    #[test]
    fn linux_supplies_say_mains_or_battery() {
        let dir = std::env::temp_dir().join(format!("chaarfm-power-{}", std::process::id()));
        let bat = |status: &'static str| {
            (
                "BAT0",
                "Battery",
                vec![("status", status), ("capacity", "42")],
            )
        };
        for (ac, status, want) in [
            ("0", "Discharging", Power::Battery(Some(42))),
            ("1", "Charging", Power::Mains),
            ("1", "Discharging", Power::Mains), // mains online wins
            ("0", "Full", Power::Mains),
        ] {
            let (n, t, f) = bat(status);
            fake(&dir, &[("AC", "Mains", &[("online", ac)]), (n, t, &f)]);
            assert_eq!(sysfs(&dir), want, "ac {ac}, {status}");
        }
        // No supply at all (a desktop, a VM), or no such directory: mains.
        fake(&dir, &[]);
        assert_eq!(sysfs(&dir), Power::Mains);
        assert_eq!(sysfs(&dir.join("none")), Power::Mains);
        // A laptop whose charger shows as USB-C, and a battery without a capacity.
        fake(
            &dir,
            &[
                ("ucsi-source-psy-1", "USB", &[("online", "1")]),
                ("BAT1", "Battery", &[("status", "Discharging")]),
            ],
        );
        assert_eq!(sysfs(&dir), Power::Mains);
        fake(&dir, &[("BAT1", "Battery", &[("status", "Discharging")])]);
        assert_eq!(sysfs(&dir), Power::Battery(None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pmset_output_says_mains_or_battery() {
        let battery = "Now drawing from 'Battery Power'\n -InternalBattery-0 (id=4653155)\t81%; discharging; 5:12 remaining present: true\n";
        assert_eq!(pmset(battery), Power::Battery(Some(81)));
        let ac = "Now drawing from 'AC Power'\n -InternalBattery-0 (id=4653155)\t100%; charged; 0:00 remaining present: true\n";
        assert_eq!(pmset(ac), Power::Mains);
        assert_eq!(pmset("Now drawing from 'AC Power'\n"), Power::Mains); // a Mac mini
        assert_eq!(pmset(""), Power::Mains);
    }
}
