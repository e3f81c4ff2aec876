//! Stopping the worker never fails a job. With downloads in flight (a fake `yt-dlp`
//! that answers slowly, as a long video or a slow network does), the stop signals of real
//! use: SIGTERM and SIGINT to the worker's whole process group (`systemctl stop` with
//! systemd's default KillMode, a terminal's Ctrl-C), SIGTERM to the supervisor alone
//! (KillMode=mixed), and SIGTERM to every process of the service at once (an old unit's
//! KillMode=control-group). Each time: no failed result, every job stored or back in the
//! server's queue, exit 0 within the drain budget, no process of ours left. And a
//! download gone silent is handed back after the stall window while the rest proceed.
#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::ytdlp::FakeYtDlp;
use chaarfm_tests::{children_of, corpus_dir, in_groups, wait_until, Spawned, TempDir};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// How long a stopped worker may take to exit: embeddings in flight finish (seconds),
/// the last results are proven delivered (3 s), the connections close (3 s).
const DRAIN_BUDGET: Duration = Duration::from_secs(60);

struct Setup {
    mock: Mock,
    ytdlp: FakeYtDlp,
    ids: Vec<String>,
    tmp: TempDir,
}

/// A mock whose `/ingest` page is open (so its queue outlives the worker's connections,
/// and a handed-back job can be seen in it), with `jobs` YouTube jobs `vid001...`.
fn setup(label: &str, jobs: usize) -> Setup {
    setup_with(label, jobs, MockConfig::new(corpus_dir()))
}

fn setup_with(label: &str, jobs: usize, cfg: MockConfig) -> Setup {
    let tmp = TempDir::new(label);
    let ytdlp = FakeYtDlp::in_venv(tmp.path());
    let mock = Mock::start(cfg);
    mock.hold_ui(true);
    let ids = mock.add_youtube_jobs(jobs);
    Setup {
        mock,
        ytdlp,
        ids,
        tmp,
    }
}

/// The worker, leading its own process group as a service or a terminal job does.
fn start(s: &Setup, env: &[(&str, &str)]) -> Spawned {
    let mut cmd = s.mock.worker(&s.tmp.join("state"));
    cmd.args(["--workers", "1"])
        .env("CHAARFM_YTDLP", s.ytdlp.path())
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Spawned::spawn(cmd)
}

fn succeeded(mock: &Mock) -> HashSet<String> {
    mock.received()
        .into_iter()
        .filter(|r| r.msg.get("status").and_then(Value::as_str) == Some("success"))
        .map(|r| r.job_id)
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    /// `systemctl stop` with systemd's default KillMode: SIGTERM to the process group.
    GroupTerm,
    /// Ctrl-C in a terminal: SIGINT to the foreground process group.
    GroupInt,
    /// KillMode=mixed (our unit): SIGTERM to the supervisor alone.
    SupervisorTerm,
    /// An old unit's KillMode=control-group: SIGTERM to the supervisor and to every
    /// yt-dlp at once (a process group does not shield a helper from it).
    EveryProcessTerm,
}

/// One job is stored, two slow downloads are in flight, then `how` stops the worker.
fn a_stop_hands_back_and_fails_nothing(label: &str, how: Stop) {
    a_stop_hands_back_and_fails_nothing_on(setup(label, 6), how);
}

fn a_stop_hands_back_and_fails_nothing_on(s: Setup, how: Stop) {
    a_stop_hands_back_and_fails_nothing_on_ref(&s, how);
}

fn a_stop_hands_back_and_fails_nothing_on_ref(s: &Setup, how: Stop) {
    s.ytdlp.answer("slow:150"); // 30 s per download, writing as it goes
    s.ytdlp.answer_for("vid001", "ok");
    let mut sup = start(s, &[]);
    let pid = sup.id();
    let ready = wait_until(Duration::from_secs(90), || {
        s.mock.stored_len() >= 1 && s.ytdlp.pids().len() >= 3
    });
    assert!(ready, "never had a job done and two downloads in flight");
    let children = children_of(pid)
        .into_iter()
        .filter(|c| !s.ytdlp.pids().contains(c))
        .collect::<Vec<_>>();
    let group = Pid::from_raw(pid as i32);
    let signalled = Instant::now();
    match how {
        Stop::GroupTerm => killpg(group, Signal::SIGTERM).unwrap(),
        Stop::GroupInt => killpg(group, Signal::SIGINT).unwrap(),
        Stop::SupervisorTerm => kill(group, Signal::SIGTERM).unwrap(),
        Stop::EveryProcessTerm => {
            kill(group, Signal::SIGTERM).unwrap();
            for p in s.ytdlp.pids() {
                let _ = kill(Pid::from_raw(p as i32), Signal::SIGTERM);
            }
        }
    }
    let exited = wait_until(DRAIN_BUDGET, || !sup.running());
    if !exited {
        let _ = sup.child.kill();
    }
    let took = signalled.elapsed();
    let (code, _, stderr) = sup.wait();
    assert!(
        exited,
        "still running {DRAIN_BUDGET:?} after {how:?}; stderr:\n{stderr}"
    );
    assert_eq!(code, Some(0), "{how:?}; stderr:\n{stderr}");
    let failed = s.mock.failed();
    assert!(
        failed.is_empty(),
        "{how:?} failed jobs: {failed:?}\n{stderr}"
    );
    let (stored, queued): (HashSet<String>, HashSet<String>) = (
        succeeded(&s.mock),
        s.mock.queued_ids().into_iter().collect(),
    );
    for id in &s.ids {
        assert!(
            stored.contains(id) || queued.contains(id),
            "{how:?}: job {id} is neither stored nor back in the queue (stored {stored:?}, queued {queued:?})\n{stderr}"
        );
    }
    assert!(
        stderr.contains("handed back: stopping"),
        "{how:?}: the log does not say the jobs were handed back:\n{stderr}"
    );
    let after_stop = stderr
        .find("stopping: no new jobs")
        .map_or("", |i| &stderr[i..]);
    assert!(
        !after_stop.contains("more connection(s)") && !after_stop.contains("lane=2"),
        "{how:?}: connections were opened after the stop:\n{stderr}"
    );
    // Nothing of ours is left: the worker's group, each child's, each yt-dlp's.
    let mut groups = vec![pid];
    groups.extend(children);
    groups.extend(s.ytdlp.pids());
    let clean = wait_until(Duration::from_secs(10), || in_groups(&groups).is_empty());
    assert!(clean, "{how:?}: processes left: {:?}", in_groups(&groups));
    eprintln!(
        "{how:?}: exited 0 {took:.1?} after the signal; {} stored, {} back in the queue",
        stored.len(),
        queued.len()
    );
}

#[test]
fn sigterm_to_the_group_hands_back_and_fails_nothing() {
    a_stop_hands_back_and_fails_nothing("stop-group-term", Stop::GroupTerm);
}

#[test]
fn sigint_to_the_group_hands_back_and_fails_nothing() {
    a_stop_hands_back_and_fails_nothing("stop-group-int", Stop::GroupInt);
}

#[test]
fn sigterm_to_the_supervisor_alone_hands_back_and_fails_nothing() {
    a_stop_hands_back_and_fails_nothing("stop-sup-term", Stop::SupervisorTerm);
}

#[test]
fn sigterm_to_every_process_of_the_service_hands_back_and_fails_nothing() {
    a_stop_hands_back_and_fails_nothing("stop-all-term", Stop::EveryProcessTerm);
}

#[test]
fn sigterm_with_protocol_2_releases_the_downloads_and_fails_nothing() {
    let cfg = MockConfig {
        protocol2: Some(2),
        ..MockConfig::new(corpus_dir())
    };
    let s = setup_with("stop-p2-term", 6, cfg);
    a_stop_hands_back_and_fails_nothing_on_ref(&s, Stop::GroupTerm);
    let released = s.mock.released();
    assert!(
        !released.is_empty(),
        "protocol 2: the cancelled downloads were not released"
    );
}

#[test]
fn a_silent_download_is_handed_back_after_the_stall_window_and_the_rest_proceed() {
    let s = setup("stop-stall", 4);
    // vid002 says nothing and writes nothing twice (the first try and its one retry),
    // then works.
    s.ytdlp.answer_for("vid002", "silent:2");
    let sup = start(&s, &[("CHAARFM_DOWNLOAD_STALL_S", "2")]);
    let all = s.mock.wait_results(s.ids.len(), Duration::from_secs(120));
    let (code, stderr) = chaarfm_tests::stop(sup);
    assert!(all, "not every job done; stderr:\n{stderr}");
    assert_eq!(code, Some(0));
    assert!(s.mock.failed().is_empty(), "{:?}", s.mock.failed());
    assert_eq!(succeeded(&s.mock).len(), s.ids.len());
    assert!(
        stderr.contains("download stalled; trying once more"),
        "{stderr}"
    );
    assert!(
        stderr.contains("nothing written for 2 s (CHAARFM_DOWNLOAD_STALL_S), twice"),
        "not handed back after the retry:\n{stderr}"
    );
    assert_eq!(
        s.ytdlp.calls_for("vid002"),
        3,
        "stall, retry, then the hand-back's run"
    );
    // The stalled yt-dlps (and their sleeps) were killed, not left running.
    let clean = wait_until(Duration::from_secs(10), || {
        in_groups(&s.ytdlp.pids()).is_empty()
    });
    assert!(
        clean,
        "stalled helpers left: {:?}",
        in_groups(&s.ytdlp.pids())
    );
}
