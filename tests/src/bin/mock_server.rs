//! `chaarfm-mock-server`: the tests' mock ChaarFM server as a program, to try the whole
//! flow on one machine. Queues one download job per audio file in DIR (served by the mock
//! itself), prints each result as it arrives. With `--until-done`, prints `queue done: ...`
//! once every job has a result (`scripts/run.sh` waits for that line) and keeps serving
//! until stopped, so the worker's drain can still deliver.
//!
//!     chaarfm-mock-server [--port 8765] [--protocol2 SLOTS] [--code TEST42] [--until-done] DIR
//!     chaarfm-super --url http://127.0.0.1:8765 --code TEST42 --allow-private-urls
use std::time::Duration;

use chaarfm_tests::mock::{Mock, MockConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(dir) = args.last().filter(|a| !a.starts_with("--")) else {
        eprintln!(
            "usage: chaarfm-mock-server [--port N] [--protocol2 SLOTS] [--code CODE] [--until-done] AUDIO_DIR"
        );
        std::process::exit(2);
    };
    let mut cfg = MockConfig::new(dir.into());
    cfg.port = value("--port").and_then(|p| p.parse().ok()).unwrap_or(8765);
    cfg.protocol2 = value("--protocol2").and_then(|p| p.parse().ok());
    if let Some(c) = value("--code") {
        cfg.code = c;
    }
    let code = cfg.code.clone();
    let mock = Mock::start(cfg);
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_file() && is_audio(&e.path()))
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in &files {
        mock.add_audio_job(f);
    }
    println!(
        "mock ChaarFM on {} with {} job(s); run: chaarfm-super --url {} --code {code} --allow-private-urls",
        mock.base_url(),
        files.len(),
        mock.base_url()
    );
    let until_done = args.iter().any(|a| a == "--until-done");
    let mut announced = false;
    let mut seen = 0;
    loop {
        let got = mock.received();
        for r in &got[seen..] {
            let status = r.msg.get("status").and_then(|s| s.as_str()).unwrap_or("?");
            let detail = r
                .msg
                .get("error")
                .cloned()
                .or_else(|| r.msg.get("data").and_then(|d| d.get("youtube_id")).cloned())
                .unwrap_or_default();
            println!("result {} {status} {detail}", r.job_id);
        }
        seen = got.len();
        if until_done && !announced {
            let answered: std::collections::HashSet<&str> =
                got.iter().map(|r| r.job_id.as_str()).collect();
            if answered.len() >= files.len() {
                let failed = mock.failed();
                let reasons: Vec<String> = failed
                    .iter()
                    .map(|r| {
                        let e = r.msg.get("error").and_then(|e| e.as_str()).unwrap_or("?");
                        format!("{}: {e}", r.job_id)
                    })
                    .collect();
                println!(
                    "queue done: {} job(s), {} stored, {} failed{}{}",
                    files.len(),
                    mock.stored().len(),
                    failed.len(),
                    if reasons.is_empty() { "" } else { " - " },
                    reasons.join("; ")
                );
                announced = true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Files the mock queues: what a worker could be asked to embed (not `refs.json`).
fn is_audio(p: &std::path::Path) -> bool {
    const AUDIO: &[&str] = &[
        "mp3", "m4a", "aac", "ogg", "oga", "opus", "flac", "wav", "webm", "mka",
    ];
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO.contains(&e.to_ascii_lowercase().as_str()))
}
