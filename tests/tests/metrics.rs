//! `--metrics`: scraped during a run against the mock, the counters match the jobs done.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::{binary, corpus_dir, references, stop_with_output, Spawned, TempDir};

/// `GET path` over HTTP/1.1 on loopback: the status line and the body.
fn get(port: u16, path: &str) -> std::io::Result<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// The value of the sample line `name` (with its labels), as a number.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn metrics_scraped_during_a_run_count_the_jobs_done() {
    let refs = references();
    let files = ["caves.flac", "palace.wav", "too-short-2s.wav"];
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    for f in files {
        mock.add_audio_job(f);
    }
    let state = TempDir::new("metrics");
    // A port that was free a moment ago; if another process took it meanwhile, the worker
    // says so at once (exit 2) and we take another.
    let (sup, port) = (0..5)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let mut cmd = Command::new(binary());
            cmd.args([
                "--url",
                &mock.base_url(),
                "--code",
                "TEST42",
                "--workers",
                "2",
            ])
            .arg("--allow-private-urls")
            .args(["--metrics", &port.to_string(), "--state-dir"])
            .arg(state.path());
            chaarfm_tests::machine_neutral(&mut cmd);
            let mut sup = Spawned::spawn(cmd);
            // Up (healthz answers) or gone (the port was taken): whichever comes first.
            loop {
                if !sup.running() {
                    let (_, _, err) = sup.wait();
                    assert!(err.contains("cannot serve metrics"), "{err}");
                    return None;
                }
                if get(port, "/healthz").is_ok() {
                    return Some((sup, port));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .expect("a free port in 5 tries");
    let all = mock.wait_results(files.len(), Duration::from_secs(300));
    let (status, text) = get(port, "/metrics").unwrap();
    let (health, health_body) = get(port, "/healthz").unwrap();
    let (missing, _) = get(port, "/nothing").unwrap();
    let (code, _, stderr) = stop_with_output(sup);
    assert!(all, "stderr:\n{stderr}");
    assert_eq!(code, Some(0), "stderr:\n{stderr}");

    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(sample(&text, "chaarfm_jobs_total{outcome=\"stored\"}"), 2.0);
    assert_eq!(sample(&text, "chaarfm_jobs_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(
        sample(&text, "chaarfm_jobs_total{outcome=\"handed_back\"}"),
        0.0
    );
    let want: f64 = files
        .iter()
        .filter(|f| refs[**f].vector.is_some())
        .map(|f| refs[*f].seconds)
        .sum();
    let audio = sample(&text, "chaarfm_audio_seconds_total");
    assert!(
        (audio - want).abs() < 1.0,
        "audio {audio} s, stored files {want} s"
    );
    assert_eq!(sample(&text, "chaarfm_children"), 2.0);
    assert_eq!(sample(&text, "chaarfm_children_alive"), 2.0);
    assert_eq!(sample(&text, "chaarfm_connected"), 1.0);
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert_eq!(health, "HTTP/1.1 200 OK", "{health_body}");
    assert!(health_body.starts_with("ok: 2/2 children alive"));
    assert_eq!(missing, "HTTP/1.1 404 Not Found");
}
