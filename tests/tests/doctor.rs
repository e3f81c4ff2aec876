//! `chaarfm-super doctor`: passes on this machine against the mock without taking a job,
//! and fails, saying what to do, for each thing a user can get wrong.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::{binary, corpus_dir, TempDir};
use serde_json::Value;

/// Runs `doctor --json` with `args`; its exit code and its checks by name.
fn doctor(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Vec<(String, String, String)>) {
    let mut cmd = Command::new(binary());
    cmd.arg("doctor").arg("--json").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out: Output = cmd.output().expect("run doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("check"), s("status"), s("detail"))
        })
        .collect();
    assert_eq!(doc["ok"].as_bool(), Some(out.status.code() == Some(0)));
    (out.status.code(), checks)
}

fn find<'a>(checks: &'a [(String, String, String)], name: &str) -> (&'a str, &'a str) {
    let c = checks
        .iter()
        .find(|c| c.0 == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:?}"));
    (&c.1, &c.2)
}

#[test]
fn doctor_passes_here_and_checks_the_code_without_taking_a_job() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    // The page that made the job is open (the coordinator keeps a session only while a
    // page or a worker holds it).
    mock.hold_ui(true);
    mock.add_audio_job("caves.flac");
    let state = TempDir::new("doctor-ok");
    let url = mock.base_url();
    let state_s = state.path().display().to_string();
    let (code, checks) = doctor(
        &["--url", &url, "--code", "TEST42", "--state-dir", &state_s],
        &[],
    );
    assert_eq!(code, Some(0), "{checks:#?}");
    for name in [
        "runtime",
        "model",
        "workers",
        "cuda",
        "yt-dlp",
        "state-dir",
        "outbox",
        "server",
        "pairing",
    ] {
        let (status, detail) = find(&checks, name);
        assert!(
            status == "ok" || status == "warn",
            "{name}: {status} {detail}"
        );
    }
    let (_, runtime) = find(&checks, "runtime");
    assert!(runtime.starts_with("ONNX Runtime 1."), "{runtime}");
    let (_, pairing) = find(&checks, "pairing");
    assert!(
        pairing.contains("TE***") && !pairing.contains("TEST42"),
        "{pairing}"
    );
    assert!(pairing.contains("today's protocol"), "{pairing}");
    // The doctor connected (the mock handed it the job) and closed: the job is back in
    // the queue and nothing was worked.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.queued() != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mock.queued(), 1, "the job went back to the queue");
    assert!(mock.connections() >= 1);
    assert!(mock.received().is_empty() && mock.stored_len() == 0);

    // A server that announces protocol 2 in its handshake answer is named as such.
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.protocol2 = Some(3);
    let v2 = Mock::start(cfg);
    let url = v2.base_url();
    let (code, checks) = doctor(
        &["--url", &url, "--code", "TEST42", "--state-dir", &state_s],
        &[],
    );
    assert_eq!(code, Some(0), "{checks:#?}");
    let (_, pairing) = find(&checks, "pairing");
    assert!(pairing.contains("it speaks protocol 2"), "{pairing}");
    assert_eq!(v2.offers(), 1);
}

#[test]
fn doctor_fails_for_each_thing_a_user_can_get_wrong() {
    let dir = TempDir::new("doctor-bad");
    let state = dir.join("state");
    let state_s = state.display().to_string();

    // No ONNX Runtime.
    let none = dir.join("libnothing.so").display().to_string();
    let (code, checks) = doctor(&["--state-dir", &state_s], &[("ORT_DYLIB_PATH", &none)]);
    assert_eq!(code, Some(1));
    let (status, detail) = find(&checks, "runtime");
    assert_eq!(status, "fail");
    assert!(detail.contains("ORT_DYLIB_PATH"), "{detail}");

    // A corrupt model.
    let bad = dir.join("corrupt.onnx");
    std::fs::write(&bad, vec![7u8; 4096]).unwrap();
    let bad_s = bad.display().to_string();
    let (code, checks) = doctor(&["--model", &bad_s, "--state-dir", &state_s], &[]);
    assert_eq!(code, Some(1));
    let (status, detail) = find(&checks, "model");
    assert_eq!(status, "fail");
    assert!(
        detail.contains("corrupt") && detail.contains("corrupt.onnx"),
        "{detail}"
    );

    // No yt-dlp anywhere.
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cmd = Command::new(binary());
    let out = cmd
        .args(["doctor", "--json", "--state-dir", &state_s])
        .env_remove("CHAARFM_YTDLP")
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let yt = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "yt-dlp")
        .unwrap();
    assert_eq!(yt["status"], "fail");
    assert!(yt["detail"].as_str().unwrap().contains("not found"));

    // An unreachable server: a port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, checks) = doctor(
        &["--url", &url, "--code", "TEST42", "--state-dir", &state_s],
        &[],
    );
    assert_eq!(code, Some(1));
    let (status, detail) = find(&checks, "server");
    assert_eq!(status, "fail");
    assert!(detail.contains("cannot reach"), "{detail}");

    // A code the server refuses (ChaarFM's coordinator takes any code; a server that
    // checks them answers 403).
    let mut cfg = MockConfig::new(corpus_dir());
    cfg.refuse_other_codes = true;
    let mock = Mock::start(cfg);
    let url = mock.base_url();
    let (code, checks) = doctor(
        &["--url", &url, "--code", "WRONG9", "--state-dir", &state_s],
        &[],
    );
    assert_eq!(code, Some(1));
    assert_eq!(find(&checks, "server").0, "ok");
    let (status, detail) = find(&checks, "pairing");
    assert_eq!(status, "fail");
    assert!(
        detail.contains("refused") && detail.contains("WR***") && !detail.contains("WRONG9"),
        "{detail}"
    );
}
