//! Connect mode end to end over loopback, against the mock ChaarFM server in both modes
//! (today's one-job-per-connection server and protocol 2), plus chaos, bad server input,
//! bad URLs, SIGTERM and a supervisor restart with results waiting in the outbox.
#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chaarfm_child::{embed_file, model, InferOptions, Musicnn};
use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::{
    binary, corpus_dir, cosine, kill_random_child, make_clips, make_clips_between, references,
    stop, stop_with_output, wait_until, Spawned, TempDir, CHAOS_KILLS,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Connect mode against the mock, which serves audio on loopback: hence
/// `--allow-private-urls` (the guard itself is tested in
/// `the_private_address_guard_refuses_jobs_pointing_at_this_network`).
fn start_super(mock: &Mock, state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Spawned {
    let mut cmd = mock.worker(state);
    cmd.arg("--allow-private-urls").args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Spawned::spawn(cmd)
}

fn status(v: &Value) -> &str {
    v.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Every corpus file as a job; every vector stored and within cosine 0.9999 of Essentia's.
/// Returns the mock and the worker's stderr.
fn corpus_end_to_end(protocol2: Option<usize>) -> (Mock, String) {
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.protocol2 = protocol2;
    corpus_end_to_end_on(cfg)
}

fn corpus_end_to_end_on(cfg: MockConfig) -> (Mock, String) {
    let mock = Mock::start(cfg);
    let refs = references();
    for name in refs.keys() {
        mock.add_audio_job(name);
    }
    let state = TempDir::new("e2e");
    let sup = start_super(&mock, state.path(), &["--workers", "2"], &[]);
    let all = mock.wait_results(refs.len(), Duration::from_secs(300));
    let (code, stdout, stderr) = stop_with_output(sup);
    assert!(
        all,
        "only {} of {} results arrived; stderr:\n{stderr}",
        mock.received().len(),
        refs.len()
    );
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    // The closing summary counts every job, and the too-short clip as the one failure.
    let failed = refs.values().filter(|r| r.vector.is_none()).count();
    assert!(
        stdout.contains(&format!(
            "{} done ({failed} failed), 0 handed back",
            refs.len()
        )),
        "summary: {stdout}"
    );
    mock.assert_stored_like_essentia();
    assert!(
        mock.received().iter().all(|r| r.known),
        "a result came back for an id the server did not hand out"
    );
    assert!(mock.keepalive_hits() >= 1, "no keepalive request");
    // Protocol 2 acknowledges every result. Today's server gives no receipt, but its
    // answer to the drain's close shows it received everything sent before: nothing is
    // left to send again (perhaps into another session of the code) at the next start.
    let left: Vec<String> = std::fs::read_dir(state.join("outbox"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "outbox not empty: {left:?}");
    (mock, stderr)
}

#[test]
fn end_to_end_against_todays_server() {
    let (mock, stderr) = corpus_end_to_end(None);
    // Protocol 2 offered, not announced back: one connection per slot (2 children + 1),
    // opened without waiting for a welcome (`server::decide_protocol`'s tests show when).
    assert!(mock.offers() >= 1, "lane 0 did not offer protocol 2");
    assert_eq!(mock.hellos(), 1);
    assert!(
        stderr.contains("today's server: one job per connection; opening 2 more connection(s)"),
        "stderr:\n{stderr}"
    );
    assert!(
        mock.connections() >= 3,
        "only {} connection(s): no lanes were opened",
        mock.connections()
    );
    // Downloads over loopback take no time next to the embeddings: no more lanes.
    assert!(
        !stderr.contains("so the children are not kept waiting"),
        "stderr:\n{stderr}"
    );
}

/// Downloads that take far longer than their embeddings (1 s against an 8-s clip's
/// ~0.1 s) keep the children waiting with children + 1 jobs in hand, so connect mode
/// opens more connections to today's server (`server::pace`), up to 4 x children + 1.
#[test]
fn slow_downloads_get_more_connections_to_todays_server() {
    let audio = TempDir::new("pace-audio");
    let clips = make_clips_between(audio.path(), 10, 7, 8);
    let mut cfg = MockConfig::new(audio.path().to_path_buf());
    cfg.audio_delay = Duration::from_secs(1);
    let mock = Mock::start(cfg);
    for c in &clips {
        mock.add_audio_job(&c.file_name().unwrap().to_string_lossy());
    }
    let state = TempDir::new("pace");
    let sup = start_super(&mock, state.path(), &["--workers", "1"], &[]);
    let all = mock.wait_results(clips.len(), Duration::from_secs(300));
    let (code, _, stderr) = stop_with_output(sup);
    assert!(
        all,
        "only {} of {} results; stderr:\n{stderr}",
        mock.received().len(),
        clips.len()
    );
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(
        stderr.contains("5 in all, so the children are not kept waiting"),
        "stderr:\n{stderr}"
    );
    assert!(
        mock.connections() >= 5,
        "{} connection(s)",
        mock.connections()
    );
    assert_eq!(
        mock.duplicates(),
        0,
        "a job was done twice; received {:#?}",
        mock.received()
            .iter()
            .map(|r| (r.job_id.clone(), r.msg.clone()))
            .collect::<Vec<_>>()
    );
    for r in mock.received() {
        assert!(
            r.known && status(&r.msg) == "success",
            "{} {}",
            r.known,
            r.msg
        );
    }
}

#[test]
fn end_to_end_against_a_protocol_2_server() {
    let (mock, stderr) = corpus_end_to_end(Some(3));
    assert_eq!(mock.connections(), 1, "protocol 2 needs one connection");
    assert!(
        stderr.contains("server speaks protocol 2"),
        "stderr:\n{stderr}"
    );
}

/// A protocol-2 server that says so only in its welcome, not in its handshake answer, is
/// taken for today's at first: lanes open, then lane 0 is welcomed. Mixed like that, every
/// job is still done once and every result delivered and acknowledged.
#[test]
fn a_protocol_2_server_that_does_not_announce_it_loses_nothing() {
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.protocol2 = Some(3);
    cfg.announce = false;
    let (mock, stderr) = corpus_end_to_end_on(cfg);
    assert_eq!(mock.hellos(), 1);
    assert!(
        stderr.contains("today's server: one job per connection"),
        "stderr:\n{stderr}"
    );
    assert!(
        mock.connections() >= 3,
        "{} connection(s)",
        mock.connections()
    );
    assert_eq!(mock.duplicates(), 0, "a job was done twice");
}

#[test]
fn bad_server_input_is_skipped_and_the_connection_kept_legacy() {
    bad_server_input(None);
}

#[test]
fn bad_server_input_is_skipped_and_the_connection_kept_protocol_2() {
    bad_server_input(Some(2));
}

fn bad_server_input(protocol2: Option<usize>) {
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.garbage = true;
    cfg.protocol2 = protocol2;
    let mock = Mock::start(cfg);
    let id = mock.add_audio_job("caves.flac");
    let state = TempDir::new("garbage");
    // One connection: no lanes, so "kept" is easy to see.
    let sup = start_super(
        &mock,
        state.path(),
        &["--workers", "2", "--lanes", "off"],
        &[],
    );
    let got = mock.wait_results(1, Duration::from_secs(120));
    let (code, stderr) = stop(sup);
    assert!(got, "no result; stderr:\n{stderr}");
    assert_eq!(code, Some(0));
    let r = &mock.received()[0];
    assert_eq!(r.job_id, id);
    assert_eq!(status(&r.msg), "success");
    assert!(mock.pongs() >= 1, "ping not answered");
    assert_eq!(mock.connections(), 1, "garbage made the worker reconnect");
    for why in ["not JSON", "unknown message type", "job without job_id"] {
        assert!(stderr.contains(why), "no log line for {why:?}");
    }
    assert!(
        !stderr.contains("TEST42"),
        "the pairing code was logged in full"
    );
}

#[test]
fn bad_urls_fail_clearly_while_other_jobs_go_on() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let base = mock.base_url();
    let job = |url: String| {
        mock.add_job(serde_json::json!({"artist": "A", "title": url.clone(), "table_name": "t", "youtube_url": url}))
    };
    let cases = vec![
        (
            job("file:///etc/passwd".into()),
            "only http:// and https://",
        ),
        (
            job("ftp://example.com/song.mp3".into()),
            "only http:// and https://",
        ),
        (job("-o/tmp/pwned".into()), "only http:// and https://"),
        (job(format!("{base}/audio/missing.mp3")), "HTTP 404"),
        (job(format!("{base}/huge.mp3")), "announces"),
        (job(format!("{base}/stall.mp3")), "download failed"),
        // A byte a second never trips the per-read timeout: the floor rate does.
        (job(format!("{base}/trickle.mp3")), "download too slow: "),
        (
            job(format!("{base}/page.html")),
            "not audio: the server sent text/html",
        ),
        // A web page served as audio/mpeg under an .mp3 name: refused by the decoder,
        // never decoded by ffmpeg as speech.
        (job(format!("{base}/page.mp3")), "not a valid MP3 file"),
    ];
    let good = mock.add_audio_job("palace.wav");
    // Cut mid-body on the first request: retried, and stored.
    let cut = job(format!("{base}/cut/caves.flac"));
    let state = TempDir::new("badurls");
    let sup = start_super(
        &mock,
        state.path(),
        &["--workers", "2"],
        &[
            ("CHAARFM_READ_TIMEOUT_S", "2"),
            ("CHAARFM_DOWNLOAD_WINDOW_S", "3"),
        ],
    );
    let got = mock.wait_results(cases.len() + 2, Duration::from_secs(120));
    let (code, stderr) = stop(sup);
    assert!(
        got,
        "only {} results; stderr:\n{stderr}",
        mock.received().len()
    );
    assert_eq!(code, Some(0));
    let received = mock.received();
    let find = |id: &str| {
        received
            .iter()
            .find(|r| r.job_id == id)
            .map(|r| r.msg.clone())
            .unwrap()
    };
    for (id, want) in &cases {
        let m = find(id);
        let err = m.get("error").and_then(Value::as_str).unwrap_or("");
        println!("{id}: {err}");
        assert_eq!(status(&m), "failed");
        assert!(err.contains(want), "{id}: {err:?} does not say {want:?}");
    }
    assert_eq!(status(&find(&good)), "success");
    assert_eq!(status(&find(&cut)), "success", "{:?}", find(&cut));
    assert_eq!(
        mock.cut_requests("caves.flac"),
        2,
        "the cut download was not retried once"
    );
    // Downloads, finished or cut short, are removed with their jobs.
    let left: Vec<_> = std::fs::read_dir(state.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "download directory not cleaned: {left:?}");
}

/// Connect mode against `mock` with the private-address guard on (one child).
fn guarded(mock: &Mock, state: &Path) -> Command {
    let mut cmd = mock.worker(state);
    cmd.args(["--workers", "1"])
        .env_remove("CHAARFM_ALLOW_PRIVATE_URLS");
    cmd
}

#[test]
fn the_private_address_guard_refuses_jobs_pointing_at_this_network() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let direct = mock.add_audio_job("palace.wav");
    let metadata = mock.add_job(serde_json::json!({"artist": "A", "title": "T", "table_name": "t", "youtube_url": "http://169.254.169.254/latest/meta-data"}));
    let state = TempDir::new("guard");
    let sup = Spawned::spawn(guarded(&mock, state.path()));
    let got = mock.wait_results(2, Duration::from_secs(60));
    let (code, stderr) = stop(sup);
    assert!(got, "stderr:\n{stderr}");
    assert_eq!(code, Some(0));
    let received = mock.received();
    let error_of = |id: &str| {
        let m = &received.iter().find(|r| r.job_id == id).unwrap().msg;
        assert_eq!(status(m), "failed");
        m.get("error")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let e = error_of(&direct);
    assert!(
        e.starts_with("refused http://127.0.0.1:")
            && e.ends_with(": loopback address (pass --allow-private-urls to allow)"),
        "{e}"
    );
    assert_eq!(
        error_of(&metadata),
        "refused http://169.254.169.254/latest/meta-data: link-local address (cloud metadata included) (pass --allow-private-urls to allow)"
    );
}

/// A listener on every address of this machine that counts the connections made to it
/// (and answers 404): what a service on the LAN or on loopback would see.
fn listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = std::sync::Arc::clone(&hits);
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (port, hits)
}

/// A fake yt-dlp that records each call in `log` and fails.
fn recording_ytdlp(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let (bin, log) = (dir.join("yt-dlp"), dir.join("calls.log"));
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\necho 'ERROR: fake yt-dlp' >&2\nexit 1\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin, log)
}

/// No request reaches this machine's networks by name, by literal or through yt-dlp
/// (which resolves names itself, so it gets only YouTube URLs); the option lifts it.
#[test]
fn no_job_makes_a_request_into_this_network_by_name_or_literal() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let (port, hits) = listener();
    let tools = TempDir::new("guard-tools");
    let (ytdlp, calls) = recording_ytdlp(tools.path());
    let job = |url: String| {
        mock.add_job(serde_json::json!({"artist": "A", "title": url.clone(), "table_name": "t", "youtube_url": url}))
    };
    let ids: Vec<(String, String)> = [
        format!("http://localhost:{port}/admin"),
        format!("http://vm:{port}/admin"),
        format!("http://runsc:{port}/song.mp3"),
        format!("http://127.0.0.1:{port}/admin"),
        format!("http://[::ffff:127.0.0.1]:{port}/admin"),
        format!("http://0x7f.1:{port}/admin"),
    ]
    .into_iter()
    .filter(|u| {
        // Names this machine's /etc/hosts lacks are not a test of anything.
        let host = u
            .split("//")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .unwrap_or("");
        host.starts_with('[') || host.starts_with("0x") || resolves(host)
    })
    .map(|u| (job(u.clone()), u))
    .collect();
    assert!(ids.len() >= 4, "{ids:?}");
    let state = TempDir::new("guard-names");
    let mut cmd = guarded(&mock, state.path());
    cmd.env("CHAARFM_YTDLP", &ytdlp);
    let sup = Spawned::spawn(cmd);
    let got = mock.wait_results(ids.len(), Duration::from_secs(60));
    let (code, stderr) = stop(sup);
    assert!(got, "stderr:\n{stderr}");
    assert_eq!(code, Some(0));
    for (id, url) in &ids {
        let r = mock
            .received()
            .into_iter()
            .find(|r| &r.job_id == id)
            .unwrap();
        let err = r.msg.get("error").and_then(Value::as_str).unwrap_or("");
        assert!(
            err.starts_with("refused http://") && err.contains("loopback address"),
            "{url}: {err}"
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a request reached the listener"
    );
    assert!(
        !calls.exists(),
        "yt-dlp was run for a URL that is not YouTube: {:?}",
        std::fs::read_to_string(&calls)
    );

    // --allow-private-urls lifts it: the same request reaches the listener.
    let lifted = mock.add_job(serde_json::json!({"artist": "A", "title": "lifted", "table_name": "t", "youtube_url": format!("http://localhost:{port}/admin")}));
    let state = TempDir::new("guard-lifted");
    let sup = start_super(&mock, state.path(), &["--workers", "1"], &[]);
    let got = mock.wait_results(ids.len() + 1, Duration::from_secs(60));
    let (_, stderr) = stop(sup);
    assert!(got, "stderr:\n{stderr}");
    let r = mock
        .received()
        .into_iter()
        .find(|r| r.job_id == lifted)
        .unwrap();
    assert_eq!(r.msg["error"], "download failed: HTTP 404");
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

fn resolves(host: &str) -> bool {
    use std::net::ToSocketAddrs;
    (host, 0)
        .to_socket_addrs()
        .is_ok_and(|mut a| a.next().is_some())
}

/// Runs connect mode `args` against `mock` on `state`.
fn start_with(mock: &Mock, code: &str, state: &Path, extra: &[&str]) -> Spawned {
    let mut cmd = Command::new(binary());
    cmd.args(["--url", &mock.base_url(), "--code", code, "--state-dir"])
        .arg(state)
        .arg("--allow-private-urls")
        .args(extra);
    chaarfm_tests::machine_neutral(&mut cmd);
    Spawned::spawn(cmd)
}

fn outbox_files(state: &Path) -> usize {
    std::fs::read_dir(state.join("outbox"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

/// Results waiting for one server (a staging mock) are never sent to another server or
/// code: kept, counted at start, reported by doctor, and delivered when the worker is
/// started with that server and code again.
#[test]
fn results_go_only_to_the_server_and_code_they_were_made_for() {
    let state = TempDir::new("dest");
    // Staging: a protocol-2 server that never acknowledges, so results stay in the
    // outbox (as today's server leaves a connection's last result).
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.protocol2 = Some(3);
    cfg.ack = false;
    cfg.code = "STAGE1".into();
    let staging = Mock::start(cfg);
    for f in ["caves.flac", "palace.wav"] {
        staging.add_audio_job(f);
    }
    let sup = start_with(&staging, "STAGE1", state.path(), &["--workers", "2"]);
    assert!(
        staging.wait_results(2, Duration::from_secs(120)),
        "staging got no results"
    );
    assert!(wait_until(Duration::from_secs(10), || outbox_files(
        state.path()
    ) == 2));
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGKILL).unwrap();
    let _ = sup.wait();

    // Production: another server, another code, one job of its own.
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.code = "PROD77".into();
    let prod = Mock::start(cfg);
    let mine = prod.add_audio_job("palace.wav");
    let sup = start_with(&prod, "PROD77", state.path(), &["--workers", "1"]);
    let got = prod.wait_results(1, Duration::from_secs(120));
    let (code, stderr) = stop(sup);
    assert!(got, "stderr:\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    let received = prod.received();
    assert_eq!(
        received
            .iter()
            .map(|r| r.job_id.as_str())
            .collect::<Vec<_>>(),
        vec![mine.as_str()],
        "production received results made for staging"
    );
    assert!(
        stderr.contains(&format!(
            "2 result(s) for another server are kept in the outbox ({} with code ST***); they are sent when chaarfm-super is started with that --url and --code",
            staging.base_url()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("STAGE1") && !stderr.contains("PROD77"),
        "a code was logged in full"
    );
    assert_eq!(
        outbox_files(state.path()),
        2,
        "staging's results are still kept"
    );
    let out = Command::new(binary())
        .args([
            "doctor",
            "--url",
            &prod.base_url(),
            "--code",
            "PROD77",
            "--state-dir",
        ])
        .arg(state.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("WARN outbox")
            && l.contains("0 result(s) waiting for this server")
            && l.contains("2 result(s) for another server")),
        "{text}"
    );

    // Staging again: its results go there.
    let sup = start_with(&staging, "STAGE1", state.path(), &["--workers", "1"]);
    let again = staging.wait_results(2, Duration::from_secs(60))
        && wait_until(Duration::from_secs(60), || staging.received().len() >= 4);
    let (_, stderr) = stop(sup);
    assert!(
        again,
        "staging's results not sent to staging; stderr:\n{stderr}"
    );
}

/// Runs connect mode against `url` with `code`; it must exit 2 at once. Returns stderr.
fn refused(url: &str, code: &str) -> String {
    let state = TempDir::new("refused");
    let out = Command::new(binary())
        .args([
            "--url",
            url,
            "--code",
            code,
            "--workers",
            "1",
            "--state-dir",
        ])
        .arg(state.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

#[test]
fn a_bad_pairing_code_is_reported_plainly() {
    // ChaarFM's coordinator accepts any code; a server that checks codes answers 403.
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.refuse_other_codes = true;
    let mock = Mock::start(cfg);
    let err = refused(&mock.base_url(), "WRONG1");
    assert!(
        err.contains("refused pairing code") && err.contains("403"),
        "{err}"
    );
    assert!(!err.contains("WRONG1"), "the code was shown in full: {err}");
}

#[test]
fn a_url_without_a_worker_endpoint_is_not_called_a_bad_code() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let err = refused(&format!("{}/not-chaarfm", mock.base_url()), "TEST42");
    assert!(err.contains("no ChaarFM worker endpoint"), "{err}");
    assert!(!err.contains("pairing code"), "{err}");
}

#[test]
fn sigterm_finishes_in_flight_jobs_and_loses_none() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    // The /ingest page is open, as when a person starts a run: a stop closes every
    // connection, and only the page keeps the server's queue.
    mock.hold_ui(true);
    let mut ids = Vec::new();
    for name in [
        "awakening.mp3",
        "coherence.m4a",
        "enemy-unknown.ogg",
        "wz-track5.webm",
        "caves.flac",
        "palace.wav",
    ] {
        ids.push(mock.add_audio_job(name));
    }
    let state = TempDir::new("sigterm");
    let sup = start_super(&mock, state.path(), &["--workers", "2"], &[]);
    assert!(
        mock.wait_results(1, Duration::from_secs(120)),
        "no result before SIGTERM"
    );
    let (code, stderr) = stop(sup);
    assert_eq!(code, Some(0), "{stderr}");
    // Every job either has its result or is back in the server's queue; none in between.
    let done: HashSet<String> = mock
        .received()
        .into_iter()
        .filter(|r| status(&r.msg) == "success")
        .map(|r| r.job_id)
        .collect();
    assert_eq!(
        done.len() + mock.queued(),
        ids.len(),
        "a job was lost: {} done, {} queued",
        done.len(),
        mock.queued()
    );
    assert!(
        done.len() < ids.len(),
        "SIGTERM came after everything was done; nothing was tested"
    );
}

#[test]
fn results_in_the_outbox_survive_a_supervisor_kill() {
    let state = TempDir::new("outbox");
    let outbox = state.join("outbox");
    let count = || {
        std::fs::read_dir(&outbox)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
                })
                .count()
            })
            .unwrap_or(0)
    };
    // A protocol-2 server that never acknowledges: results are sent but stay in the outbox.
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.protocol2 = Some(3);
    cfg.ack = false;
    let first = Mock::start(cfg);
    let ids: Vec<String> = ["caves.flac", "palace.wav"]
        .iter()
        .map(|n| first.add_audio_job(n))
        .collect();
    let sup = start_super(&first, state.path(), &["--workers", "2"], &[]);
    assert!(
        first.wait_results(2, Duration::from_secs(120)),
        "results never sent"
    );
    assert!(
        wait_until(Duration::from_secs(10), || count() == 2),
        "unacknowledged results not kept in the outbox"
    );
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGKILL).unwrap();
    let _ = sup.wait();
    let port = first.addr.port();
    drop(first);

    // A new supervisor, the same state dir, the same server restarted with no jobs (a
    // new session): the outbox goes first. (Results only go to the server and code
    // they were made for: `results_go_only_to_the_server_and_code_they_were_made_for`.)
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.protocol2 = Some(3);
    cfg.port = port;
    let second = restart_on(cfg);
    // The page that starts the new run gives the session its table (the coordinator
    // stores a result for an unknown id in the session's current table, and nowhere
    // when the session has none).
    second.add_audio_job("caves.flac");
    let sup = start_super(&second, state.path(), &["--workers", "1"], &[]);
    let got = second.wait_results(3, Duration::from_secs(60));
    let emptied = wait_until(Duration::from_secs(10), || count() == 0);
    let (code, stderr) = stop(sup);
    assert!(got, "outbox not delivered; stderr:\n{stderr}");
    assert_eq!(code, Some(0));
    let delivered: HashSet<String> = second
        .received()
        .into_iter()
        .filter(|r| !r.known)
        .map(|r| r.job_id)
        .collect();
    assert_eq!(
        delivered,
        ids.into_iter().collect::<HashSet<_>>(),
        "the new server never handed these out"
    );
    assert_eq!(
        second.stored().len(),
        2,
        "results for unknown ids are stored (and caves.flac once)"
    );
    assert!(emptied, "outbox not emptied after the acks");
}

/// A mock on `cfg.port`, just freed by another (the OS may take a moment).
fn restart_on(cfg: MockConfig) -> Mock {
    for _ in 0..50 {
        if let Ok(m) = Mock::try_start(cfg.clone()) {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("port {} not free again", cfg.port);
}

/// Both server modes, one after the other (two chaos runs at once on 2 cores would mostly
/// test how long jobs get under contention).
#[test]
fn chaos_dropped_connections_and_killed_children_lose_nothing() {
    chaos(None);
    chaos(Some(4));
}

fn chaos(protocol2: Option<usize>) {
    // Short clips (20-90 s of audio, ~0.5-2 s of work each), so jobs can finish between kills.
    let audio = TempDir::new("chaos-audio");
    let clips = make_clips(audio.path(), 20);
    let mut m = Musicnn::load(&model::resolve(None).unwrap(), &InferOptions::default()).unwrap();
    let names: Vec<(String, Vec<f32>)> = clips
        .iter()
        .map(|c| {
            (
                c.file_name().unwrap().to_string_lossy().to_string(),
                embed_file(c, &mut m).unwrap().vector,
            )
        })
        .collect();
    let mut cfg = MockConfig::new(audio.path().to_path_buf());
    cfg.drop_after = Some(Duration::from_secs(3));
    cfg.protocol2 = protocol2;
    let mock = Mock::start(cfg);
    // Every connection drops every 3 s, now and then all at once: the page is open, as
    // when a person runs a session, so the coordinator keeps the queue through it.
    mock.hold_ui(true);
    for (n, _) in &names {
        mock.add_audio_job(n);
    }
    let state = TempDir::new("chaos-state");
    let sup = start_super(&mock, state.path(), &["--workers", "3"], &[]);
    let sup_pid = sup.id();
    let mut kills = 0;
    let mut seed = 0x9e37_79b9u32;
    let mut sup = sup;
    let all_stored = wait_until(Duration::from_secs(400), || {
        if mock.stored().len() >= names.len() || !sup.running() {
            return true;
        }
        // Chaos schedule: a random child every 2 s, at most CHAOS_KILLS of them.
        std::thread::sleep(Duration::from_secs(2));
        if kills < CHAOS_KILLS && kill_random_child(sup_pid, &mut seed) {
            kills += 1;
        }
        false
    });
    let all_stored = all_stored && mock.stored().len() >= names.len();
    let (code, stderr) = stop(sup);
    println!(
        "{kills} children killed; {} connections; {} results received",
        mock.connections(),
        mock.received().len()
    );
    assert!(
        all_stored,
        "stuck: {} of {} stored; stderr tail:\n{}",
        mock.stored().len(),
        names.len(),
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(code, Some(0));
    // The chaos happened: children killed, and connections dropped and reopened. Protocol 2
    // has one connection whose reconnect backoff grows (2 s, 3 s, 4.5 s...), so a fast run
    // sees few reconnects: one drop is the proof there (legacy opens 4 lanes, each dropped).
    let reopened = if protocol2.is_some() { 2 } else { 6 };
    assert!(
        kills >= 3 && mock.connections() >= reopened,
        "not much chaos: {kills} kills, {} connections",
        mock.connections()
    );
    let stored = mock.stored();
    assert_eq!(stored.len(), names.len(), "stored twice or missing");
    for (n, want) in &names {
        let id = n.rsplit_once('.').map(|(s, _)| s).unwrap();
        let got: Vec<f32> = stored[id].iter().map(|&x| x as f32).collect();
        assert!(cosine(&got, want) >= 0.9999, "{n}");
    }
    let failed: Vec<_> = mock
        .received()
        .into_iter()
        .filter(|r| status(&r.msg) == "failed")
        .collect();
    assert!(
        failed.is_empty(),
        "failed results under chaos: {:?}",
        failed.iter().map(|r| r.msg.to_string()).collect::<Vec<_>>()
    );
}
