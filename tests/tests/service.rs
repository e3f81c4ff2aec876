//! `chaarfm-super service install`: the files it writes (the code only in a 0600 file)
//! and units that systemd itself accepts (`systemd-analyze verify`, no warning).
#![cfg(target_os = "linux")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use chaarfm_tests::{binary, TempDir};

/// `systemd-analyze verify` on `unit`: exit 0 and nothing on stderr (unknown keys and bad
/// values are only warnings, with exit 0).
fn verify(unit: &Path, user: bool, rt: &Path) {
    let mut cmd = Command::new("systemd-analyze");
    if user {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", rt);
    }
    let out = cmd
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/setup.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{err}\n{}",
        unit.display(),
        out.status,
        std::fs::read_to_string(unit).unwrap_or_default()
    );
}

#[test]
fn a_user_service_keeps_the_code_in_a_private_file_and_systemd_accepts_its_unit() {
    let dir = TempDir::new("service");
    let rt = dir.join("rt");
    std::fs::create_dir_all(&rt).unwrap();
    std::fs::set_permissions(&rt, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new(binary())
        .args(["service", "install", "--user", "--no-enable"])
        .args(["--code", "SECRET77", "--url", "https://chaarfm.example"])
        .args(["--workers", "2", "--child-nice", "12"])
        .args(["--on-battery", "run", "--hours", "22:00-07:00"])
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("SECRET77") && stdout.contains("SE***"),
        "{stdout}"
    );

    let env = dir.join("config/chaarfm-super/worker.env");
    let mode = std::fs::metadata(&env).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the code's file is its owner's only");
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "CHAARFM_URL=https://chaarfm.example\nCHAARFM_CODE=SECRET77\n"
    );
    let unit = dir.join("config/systemd/user/chaarfm-super.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(!text.contains("SECRET77"), "{text}");
    let state = dir.join("state/chaarfm-super");
    assert!(
        state.is_dir(),
        "the writable path exists before the service starts"
    );
    assert!(text.contains(&format!("\"--state-dir\" \"{}\"", state.display())));
    assert!(text.contains("\"--workers\" \"2\"") && text.contains("\"--child-nice\" \"12\""));
    // The preferences: in a file the worker reads again (not flags, which would win).
    let config = dir.join("config/chaarfm-super/config.toml");
    assert!(
        text.contains(&format!("\"--config\" \"{}\"", config.display())),
        "{text}"
    );
    assert!(
        !text.contains("--hours") && !text.contains("--on-battery"),
        "{text}"
    );
    assert!(
        text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{text}"
    );
    let prefs = std::fs::read_to_string(&config).unwrap();
    assert!(
        prefs.contains("on-battery = \"run\"\n") && prefs.contains("hours = \"22:00-07:00\"\n"),
        "{prefs}"
    );
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the service's user reads it");
    verify(&unit, true, &rt);
    // Installing again without preference flags keeps what the file says.
    let again = Command::new(binary())
        .args(["service", "install", "--user", "--no-enable"])
        .args(["--code", "SECRET77", "--pause-when-busy", "off"])
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let prefs = std::fs::read_to_string(&config).unwrap();
    assert!(
        prefs.contains("hours = \"22:00-07:00\"\n")
            && prefs.contains("pause-when-busy = \"off\"\n"),
        "{prefs}"
    );
}

#[test]
fn a_system_unit_passes_verify_and_a_dry_run_writes_nothing() {
    let dir = TempDir::new("service-sys");
    let out = Command::new(binary())
        .args(["service", "install", "--dry-run", "--code", "SECRET77"])
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("SECRET77"), "{stdout}");
    // Each file printed follows a "# /its/path" line; the unit is the first.
    let unit_text: String = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("# /"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(unit_text.contains("DynamicUser=yes"), "{unit_text}");
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(written.is_empty(), "a dry run wrote nothing: {written:?}");
    let unit = dir.join("chaarfm-super.service");
    std::fs::write(&unit, unit_text).unwrap();
    verify(&unit, false, dir.path());
}

#[test]
fn install_refuses_what_cannot_work() {
    let dir = TempDir::new("service-bad");
    for (args, want) in [
        (&["--user", "--no-enable"][..], "no pairing code"),
        (
            &["--user", "--no-enable", "--code", "bad code"][..],
            "letters, digits",
        ),
        (
            &["--user", "--no-enable", "--code", "OK1", "--url", "ftp://x"][..],
            "http",
        ),
        (
            &["--dry-run", "--code", "OK1", "--state-dir", "/srv/x"][..],
            "--user",
        ),
    ] {
        let out = Command::new(binary())
            .args(["service", "install"])
            .args(args)
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env_remove("CHAARFM_CODE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!dir.join("config").exists(), "nothing written");
}
