//! The computing preferences against the mock coordinator, with a fake
//! `/sys/class/power_supply` (`CHAARFM_POWER_SUPPLY_DIR`) and a fake yt-dlp whose
//! downloads wait at a gate the test opens: on battery no job starts, the one in flight
//! finishes, the session's connection stays open; on mains work resumes; `status` and
//! the page at `GET /` (loaded in headless Chromium) report what happens.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::ytdlp::FakeYtDlp;
use chaarfm_tests::{binary, corpus_dir, make_clips, stop, wait_until, Spawned, TempDir};
use serde_json::Value;

/// A fake power supply directory: a mains adapter and a battery, as Linux shows them.
struct FakePower(PathBuf);

impl FakePower {
    fn new(dir: &Path) -> FakePower {
        let p = FakePower(dir.to_path_buf());
        for (supply, kind) in [("AC", "Mains"), ("BAT0", "Battery")] {
            std::fs::create_dir_all(dir.join(supply)).unwrap();
            p.write(supply, "type", kind);
        }
        p.write("BAT0", "capacity", "80");
        p.mains();
        p
    }

    /// Whole files, renamed into place: a reader never sees one half-written.
    fn write(&self, supply: &str, name: &str, value: &str) {
        let tmp = self.0.join(supply).join(format!(".{name}"));
        std::fs::write(&tmp, format!("{value}\n")).unwrap();
        std::fs::rename(&tmp, self.0.join(supply).join(name)).unwrap();
    }

    fn battery(&self, percent: u8) {
        self.write("BAT0", "capacity", &percent.to_string());
        self.write("AC", "online", "0");
        self.write("BAT0", "status", "Discharging");
    }

    fn mains(&self) {
        self.write("AC", "online", "1");
        self.write("BAT0", "status", "Charging");
    }
}

/// A worker against `mock` with the fakes and one child; the preferences not under test
/// are off (`Mock::worker`: the CI machine is busy, its disk may be small).
fn worker(mock: &Mock, tmp: &TempDir, ytdlp: &FakeYtDlp, power: &FakePower) -> Command {
    let mut cmd = mock.worker(&tmp.join("state"));
    cmd.args(["--workers", "1"])
        .env("CHAARFM_YTDLP", ytdlp.path())
        .env("CHAARFM_POWER_SUPPLY_DIR", &power.0)
        // No config file of the machine's user.
        .env("XDG_CONFIG_HOME", tmp.join("config"));
    cmd
}

/// `chaarfm-super status --json` for `state`: its exit code and the object.
fn status_json(state: &Path) -> (Option<i32>, Value) {
    let out = Command::new(binary())
        .args(["status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .expect("run chaarfm-super status");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v)
}

fn status_text(state: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(binary())
        .args(["status", "--state-dir"])
        .arg(state)
        .output()
        .expect("run chaarfm-super status");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn on_battery_no_job_starts_the_one_in_flight_finishes_and_mains_resumes() {
    let tmp = TempDir::new("prefs-battery");
    let power = FakePower::new(&tmp.join("power"));
    let ytdlp = FakeYtDlp::in_venv(tmp.path());
    ytdlp.answer("gate");
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let ids = mock.add_youtube_jobs(3);
    let state = tmp.join("state");
    // One connection: today's server gives it one job at a time.
    let mut cmd = worker(&mock, &tmp, &ytdlp, &power);
    cmd.args(["--lanes", "off"]);
    let sup = Spawned::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(60), || ytdlp.calls() == 1),
        "no download started"
    );
    let (code, st) = status_json(&state);
    assert_eq!(
        (code, &st["state"]),
        (Some(0), &Value::from("working")),
        "{st}"
    );
    // Unplugged while the first job downloads.
    power.battery(42);
    assert!(
        wait_until(Duration::from_secs(30), || sup
            .stderr_contains("paused: on battery (42%)")),
        "no pause on battery"
    );
    ytdlp.open_gate();
    // The job in flight finishes and is delivered; the server's next job arrives on the
    // connection kept open and waits there.
    assert!(
        mock.wait_results(1, Duration::from_secs(120)),
        "the job in flight did not finish"
    );
    assert!(
        wait_until(Duration::from_secs(30), || sup
            .stderr_contains("intake paused: job held until it reopens")),
        "the next job did not arrive on the connection kept open"
    );
    assert_eq!(
        ytdlp.calls(),
        1,
        "a download started on battery:\n{}",
        sup.stderr_so_far()
    );
    assert_eq!(
        mock.workers("TEST42"),
        1,
        "the session's connection was closed"
    );
    let (code, st) = status_json(&state);
    assert_eq!(code, Some(0));
    assert_eq!(st["state"], "paused", "{st}");
    assert_eq!(st["reason"], "on battery (42%)", "{st}");
    assert!(st["since"].as_str().is_some_and(|s| s.len() >= 20), "{st}");
    assert_eq!(st["tracks_total"], 1, "{st}");
    let (code, text, _) = status_text(&state);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("paused since ") && text.contains("on battery (42%)"),
        "{text}"
    );
    // Back on mains: the held job and the rest are done.
    power.mains();
    assert!(
        wait_until(Duration::from_secs(30), || sup
            .stderr_contains("resumed: on mains")),
        "no resume on mains"
    );
    assert!(
        mock.wait_results(ids.len(), Duration::from_secs(180)),
        "not every job done after the resume"
    );
    assert!(
        wait_until(Duration::from_secs(30), || status_json(&state).1["state"]
            == "working"),
        "status did not report working again: {}",
        status_json(&state).1
    );
    let (_, st) = status_json(&state);
    assert_eq!(st["tracks_total"], 3, "{st}");
    // (Today's count is the local day's: unit-tested in server::record, compared with the
    // page below; here a run across midnight would split it.)
    assert_eq!(mock.sessions_deleted(), 0, "the pause deleted the session");
    let (code, stderr) = stop(sup);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(mock.stored().len(), ids.len(), "stored once each");
    assert!(mock.failed().is_empty(), "{:?}", mock.failed());
    assert_eq!(mock.jobs_lost(), 0, "the server's queue was deleted");
    assert_eq!(stderr.matches("paused: on battery").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("resumed: on mains").count(), 1, "{stderr}");
    // No worker now: status says so, exit 3.
    let (code, _, err) = status_text(&state);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("no worker is running"), "{err}");
}

#[test]
fn the_config_file_is_read_again_when_it_changes_and_a_bad_value_keeps_the_old() {
    let tmp = TempDir::new("prefs-config");
    let power = FakePower::new(&tmp.join("power"));
    power.battery(42);
    let ytdlp = FakeYtDlp::in_venv(tmp.path());
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let ids = mock.add_youtube_jobs(2);
    let config = tmp.join("worker.toml");
    std::fs::write(&config, "# on battery: no\non-battery = \"pause\"\n").unwrap();
    // A bad value at start is refused with its line, before anything starts.
    let bad = tmp.join("bad.toml");
    std::fs::write(&bad, "on-battery = \"run\"\nhours = \"25:00-07:00\"\n").unwrap();
    let out = worker(&mock, &tmp, &ytdlp, &power)
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("refused at line 2") && err.contains("HH:MM-HH:MM"),
        "{err}"
    );
    let mut cmd = worker(&mock, &tmp, &ytdlp, &power);
    cmd.arg("--config").arg(&config).args(["--lanes", "off"]);
    let sup = Spawned::spawn(cmd);
    // Started on battery: it connects (the session's connection) and holds its job.
    assert!(
        wait_until(Duration::from_secs(60), || sup
            .stderr_contains("intake paused: job held until it reopens")),
        "no job held while started on battery:\n{}",
        sup.stderr_so_far()
    );
    assert!(sup.stderr_contains("paused: on battery (42%)"));
    assert_eq!(ytdlp.calls(), 0, "a download started on battery");
    // A bad edit keeps the preferences in force.
    std::fs::write(&config, "on-battery = \"pause\"\n\npause-when-busy = 150\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || sup
            .stderr_contains("refused at line 3")),
        "a bad edit was not reported with its line"
    );
    assert!(sup.stderr_contains("the preferences in force are kept"));
    assert_eq!(ytdlp.calls(), 0);
    // Allowed on battery now: work resumes.
    std::fs::write(&config, "on-battery = \"run\"\nbattery-min-percent = 20\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || sup
            .stderr_contains("resumed: battery at 42%")),
        "the changed file was not read again"
    );
    assert!(
        mock.wait_results(ids.len(), Duration::from_secs(180)),
        "not every job done after the change"
    );
    assert_eq!(mock.sessions_deleted(), 0, "the pause deleted the session");
    let (code, stderr) = stop(sup);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(mock.failed().is_empty(), "{:?}", mock.failed());
}

/// `GET path` on `addr`: the body.
fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The text of the element with `id` in a DOM Chromium dumped (our page's markup).
fn by_id(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].to_string())
}

/// The figures the page and `/status.json` share.
fn figures(v: &Value) -> Vec<(&'static str, String)> {
    let n = |k: &str| v[k].to_string();
    vec![
        ("state", v["state"].as_str().unwrap_or("").to_string()),
        ("tracks_today", n("tracks_today")),
        ("tracks_total", n("tracks_total")),
        ("failed_today", n("failed_today")),
        ("failed_total", n("failed_total")),
        ("outbox", n("outbox")),
        ("restarts", n("restarts")),
        (
            "children_alive",
            format!("{}/{}", v["children_alive"], v["children"]),
        ),
    ]
}

#[test]
fn the_status_page_shows_in_chromium_what_status_json_says() {
    let tmp = TempDir::new("prefs-page");
    let power = FakePower::new(&tmp.join("power"));
    let ytdlp = FakeYtDlp::in_venv(tmp.path());
    let audio = TempDir::new("prefs-page-audio");
    let clips = make_clips(audio.path(), 3);
    let mock = Mock::start(MockConfig::new(audio.path().to_path_buf()));
    for c in &clips {
        mock.add_audio_job(&c.file_name().unwrap().to_string_lossy());
    }
    // One the track's fault: bytes that are no audio.
    std::fs::write(audio.join("junk.mp3"), b"this is not audio").unwrap();
    let junk = mock.add_audio_job("junk.mp3");
    let mut cmd = worker(&mock, &tmp, &ytdlp, &power);
    cmd.args(["--metrics", "127.0.0.1:0", "--allow-private-urls"]);
    let sup = Spawned::spawn(cmd);
    assert!(
        mock.wait_results(clips.len() + 1, Duration::from_secs(180)),
        "not every job done"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, st) = status_json(&tmp.join("state"));
            st["tracks_total"] == clips.len() && st["failed_total"] == 1
        }),
        "{}",
        status_json(&tmp.join("state")).1
    );
    // The address it bound (port 0: any free one), as it logged it.
    let log = sup.stderr_so_far();
    let addr = log
        .split("status page on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the status page's address in the log")
        .to_string();
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    // The two reads of the JSON agree unless something changed between them (an hour
    // turned, a result arrived): then read again.
    let (json, dom) = (0..5)
        .find_map(|_| {
            let before: Value = serde_json::from_str(&get(&addr, "/status.json")).unwrap();
            let dom = chromium(&format!("http://{addr}/"), None);
            let after: Value = serde_json::from_str(&get(&addr, "/status.json")).unwrap();
            (figures(&before) == figures(&after) && before["per_hour"] == after["per_hour"])
                .then_some((after, dom))
        })
        .expect("the figures kept changing");
    for (id, want) in figures(&json) {
        assert_eq!(
            by_id(&dom, id).as_deref(),
            Some(want.as_str()),
            "{id} in:\n{dom}"
        );
    }
    let values: Vec<String> = json["per_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    assert_eq!(values.len(), 24);
    assert!(
        dom.contains(&format!("data-values=\"{}\"", values.join(","))),
        "the chart is not the JSON's per_hour {values:?}:\n{dom}"
    );
    assert_eq!(dom.matches("<rect ").count(), 24, "{dom}");
    assert!(!dom.contains("<script"), "{dom}");
    assert!(
        dom.contains(&format!(" {junk}: ")),
        "the failure is not listed:\n{dom}"
    );
    // A picture for a person, under target/.
    chromium(&format!("http://{addr}/"), Some(&shot));
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "no screenshot"
    );
    let (code, stderr) = stop(sup);
    assert_eq!(code, Some(0), "{stderr}");
}

/// Loads `url` in headless Chromium: the DOM it rendered, or a screenshot at `shot`.
fn chromium(url: &str, shot: Option<&Path>) -> String {
    let profile = TempDir::new("chromium-profile");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match shot {
        Some(p) => {
            cmd.arg(format!("--screenshot={}", p.display()))
                .arg("--window-size=900,1000");
        }
        None => {
            cmd.arg("--dump-dom");
        }
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("run chromium (scripts/setup.sh installs it: apt-get install chromium)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}
