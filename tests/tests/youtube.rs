//! When YouTube refuses this machine, no track is failed: the job is handed back (the
//! session's last connection kept), intake pauses with back-off, one probe job goes
//! first, and work resumes once YouTube answers. A fake `yt-dlp` (the tests choose which
//! yt-dlp runs) answers with yt-dlp's real messages, chosen by a file beside it.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::ytdlp::FakeYtDlp;
use chaarfm_tests::{binary, corpus_dir, stop, wait_until, Spawned, TempDir};
use serde_json::Value;

const BOT: &str = "ERROR: [youtube] @ID@: Sign in to confirm you\u{2019}re not a bot. Use --cookies-from-browser or --cookies for the authentication. See  https://github.com/yt-dlp/yt-dlp/wiki/FAQ#how-do-i-pass-cookies-to-yt-dlp  for how to manually pass cookies.";
const PRIVATE: &str = "ERROR: [youtube] @ID@: Private video. Sign in if you've been granted access to this video. Use --cookies-from-browser or --cookies for the authentication.";
const UNKNOWN: &str = "ERROR: [youtube] @ID@: The flux capacitor answered 7";

struct Setup {
    mock: Mock,
    ytdlp: FakeYtDlp,
    ids: Vec<String>,
    _tmp: TempDir,
}

fn setup(label: &str, jobs: usize) -> Setup {
    let tmp = TempDir::new(label);
    let ytdlp = FakeYtDlp::in_venv(tmp.path());
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let ids = mock.add_youtube_jobs(jobs);
    Setup {
        mock,
        ytdlp,
        ids,
        _tmp: tmp,
    }
}

fn start(s: &Setup, state: &Path) -> Spawned {
    start_with(s, state, &[])
}

fn start_with(s: &Setup, state: &Path, extra: &[&std::ffi::OsStr]) -> Spawned {
    let mut cmd = s.mock.worker(state);
    cmd.args(["--workers", "1"])
        .args(extra)
        .env("CHAARFM_YTDLP", s.ytdlp.path())
        .env("CHAARFM_YOUTUBE_BACKOFF_S", "1");
    Spawned::spawn(cmd)
}

fn error_of(mock: &Mock, id: &str) -> Option<String> {
    mock.received()
        .into_iter()
        .find(|r| r.job_id == id)
        .and_then(|r| {
            r.msg
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
}

#[test]
fn the_bot_check_fails_no_track_pauses_and_work_resumes_when_youtube_answers() {
    let s = setup("yt-bot", 4);
    s.ytdlp.answer(BOT);
    let state = TempDir::new("yt-bot-state");
    let sup = start(&s, state.path());
    assert!(
        wait_until(Duration::from_secs(60), || sup
            .stderr_contains("pausing: YouTube refuses this machine")),
        "no pause"
    );
    // Probes come, one at a time, and fail: nothing is reported failed meanwhile.
    let probed = wait_until(Duration::from_secs(30), || s.ytdlp.calls() >= 3);
    assert!(probed, "no probe after the back-off");
    assert!(s.mock.failed().is_empty(), "{:?}", s.mock.failed());
    assert_eq!(
        s.mock.sessions_deleted(),
        0,
        "the session's last connection was closed"
    );
    s.ytdlp.answer("ok");
    let all = s.mock.wait_results(s.ids.len(), Duration::from_secs(120));
    let (code, stderr) = stop(sup);
    assert!(all, "not every job done; stderr:\n{stderr}");
    assert_eq!(code, Some(0));
    assert!(s.mock.failed().is_empty(), "{:?}", s.mock.failed());
    assert_eq!(s.mock.stored_len(), s.ids.len());
    assert!(
        stderr.contains("resumed: YouTube takes this machine again"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--cookies FILE"),
        "the log does not say what helps"
    );
    assert_eq!(
        stderr
            .matches("pausing: YouTube refuses this machine")
            .count(),
        1,
        "the pause is logged once"
    );
}

#[test]
fn a_private_video_fails_alone_and_the_rest_are_stored() {
    let s = setup("yt-private", 3);
    s.ytdlp.answer_for("vid002", PRIVATE);
    let state = TempDir::new("yt-private-state");
    let sup = start(&s, state.path());
    let all = s.mock.wait_results(3, Duration::from_secs(120));
    let (code, stderr) = stop(sup);
    assert!(all, "stderr:\n{stderr}");
    assert_eq!(code, Some(0));
    let e = error_of(&s.mock, &s.ids[1]).expect("the private one failed");
    assert!(e.contains("Private video"), "{e}");
    assert_eq!(s.mock.failed().len(), 1);
    assert_eq!(s.mock.stored_len(), 2);
    assert!(
        !stderr.contains("pausing"),
        "a private video paused the worker"
    );
}

#[test]
fn an_unknown_message_on_three_videos_pauses_instead_of_failing_the_queue() {
    let s = setup("yt-unknown", 6);
    s.ytdlp.answer(UNKNOWN);
    let state = TempDir::new("yt-unknown-state");
    let sup = start(&s, state.path());
    assert!(
        wait_until(Duration::from_secs(60), || sup
            .stderr_contains("pausing: YouTube refuses this machine")),
        "the breaker did not trip"
    );
    let failed_while_broken = s.mock.failed().len();
    assert!(failed_while_broken <= 2, "{:?}", s.mock.failed());
    s.ytdlp.answer("ok");
    let done = wait_until(Duration::from_secs(120), || {
        s.mock.stored_len() + s.mock.failed().len() == s.ids.len()
    });
    let (code, stderr) = stop(sup);
    assert!(done, "stderr:\n{stderr}");
    assert_eq!(code, Some(0));
    assert_eq!(
        s.mock.failed().len(),
        failed_while_broken,
        "failures after the trip"
    );
    assert!(
        stderr.contains("the same error on several videos"),
        "{stderr}"
    );
}

#[test]
fn an_outdated_yt_dlp_in_its_venv_updates_itself_once_and_the_jobs_succeed() {
    let s = setup("yt-outdated", 2);
    s.ytdlp.with_pip();
    s.ytdlp
        .answer("ERROR: [youtube] @ID@: Signature extraction failed: Some formats may be missing");
    let state = TempDir::new("yt-outdated-state");
    // Cookies for YouTube: passed to yt-dlp, never shown.
    let cookies = s.ytdlp.dir.join("cookies.txt");
    std::fs::write(
        &cookies,
        "# Netscape HTTP Cookie File\n.youtube.com\tTRUE\t/\tTRUE\t0\tSID\tSECRET-TOKEN-42\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookies, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let sup = start_with(
        &s,
        state.path(),
        &["--cookies".as_ref(), cookies.as_os_str()],
    );
    let all = s.mock.wait_results(2, Duration::from_secs(120));
    let (code, stderr) = stop(sup);
    assert!(all, "stderr:\n{stderr}");
    assert_eq!(code, Some(0));
    assert!(s.mock.failed().is_empty(), "{:?}", s.mock.failed());
    assert_eq!(s.mock.stored_len(), 2);
    let pip = s.ytdlp.pip_calls();
    assert_eq!(pip.len(), 1, "{pip:?}");
    assert!(
        pip[0].contains("-m pip install") && pip[0].contains("--upgrade yt-dlp[default]"),
        "{pip:?}"
    );
    assert!(
        stderr.contains("updated yt-dlp from 2024.01.01 to 2026.12.01"),
        "{stderr}"
    );
    assert!(
        s.ytdlp
            .call_log()
            .lines()
            .all(|l| l.contains(&format!("--cookies {}", cookies.display()))),
        "{}",
        s.ytdlp.call_log()
    );
    assert!(!stderr.contains("SECRET-TOKEN-42"));
}

#[test]
fn a_cookies_file_others_can_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("yt-cookies");
    let cookies = dir.join("cookies.txt");
    std::fs::write(&cookies, "# Netscape HTTP Cookie File\n").unwrap();
    std::fs::set_permissions(&cookies, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(binary())
        .args([
            "--url",
            "http://127.0.0.1:9",
            "--code",
            "TEST42",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .arg("--cookies")
        .arg(&cookies)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("refusing --cookies") && err.contains("chmod 600"),
        "{err}"
    );
}
