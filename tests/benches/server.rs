//! End-to-end throughput over loopback: the mock ChaarFM server (today's one-job-per-
//! connection semantics, or protocol 2 with `--protocol2`) serves the corpus x4 as download
//! jobs; `chaarfm-super --workers auto` downloads, embeds and returns them. Prints x realtime.
//!
//! Run: `cargo bench -p chaarfm-tests --bench server [-- --protocol2] [--engine patch|shared]
//! [--download-delay-ms N]` (after `cargo build --release`). The delay makes every download
//! wait N ms before its first byte, as a download from YouTube takes seconds where one
//! over loopback takes none.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::{binary, corpus_dir, references, TempDir};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let p2 = args.iter().any(|a| a == "--protocol2");
    let engine = args
        .iter()
        .position(|a| a == "--engine")
        .and_then(|i| args.get(i + 1))
        .map_or("shared", String::as_str);
    let delay_ms: u64 = match args.iter().position(|a| a == "--download-delay-ms") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--download-delay-ms takes a number of milliseconds"))?,
        None => 0,
    };
    let audio = TempDir::new("bench-server-audio");
    let mut seconds = 0.0;
    let mut names = Vec::new();
    for copy in 0..4 {
        for (name, r) in references() {
            if r.vector.is_some() {
                let n = format!("{copy}-{name}");
                std::fs::copy(corpus_dir().join(&name), audio.join(&n))?;
                seconds += r.seconds;
                names.push(n);
            }
        }
    }
    // Queued longest first, the order `ingest` (the pool bench) takes them in: both then
    // end on short tracks, and what differs is the end-to-end cost alone, not which long
    // track happens to run last on one core while the other idles (a server's queue
    // order is its own; over a night's queue the last track is a rounding error).
    names.sort_by_key(|n| {
        std::cmp::Reverse(std::fs::metadata(audio.join(n)).map_or(0, |m| m.len()))
    });
    let mut cfg = MockConfig::new(audio.path().to_path_buf());
    cfg.protocol2 = p2.then_some(3);
    cfg.audio_delay = Duration::from_millis(delay_ms);
    let mock = Mock::start(cfg);
    for n in &names {
        mock.add_audio_job(n);
    }
    let state = TempDir::new("bench-server-state");
    let t = Instant::now();
    let mut cmd = Command::new(binary());
    chaarfm_tests::machine_neutral(&mut cmd);
    let mut sup = cmd
        .args([
            "--url",
            &mock.base_url(),
            "--code",
            "TEST42",
            "--workers",
            "auto",
            "--allow-private-urls",
            "--engine",
            engine,
            "--state-dir",
        ])
        .arg(state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ok = mock.wait_results(names.len(), Duration::from_secs(1200));
    let wall = t.elapsed().as_secs_f64();
    let _ = sup.kill();
    let _ = sup.wait();
    anyhow::ensure!(
        ok,
        "only {} of {} results",
        mock.received().len(),
        names.len()
    );
    let stored = mock.stored().len();
    println!(
        "{} mode, --engine {engine}, downloads delayed {delay_ms} ms: {} jobs ({seconds:.0} s of audio) in {wall:.1} s = {:.1}x realtime end to end over loopback, {stored} stored, {} connection(s)",
        if p2 { "protocol-2" } else { "legacy" },
        names.len(),
        seconds / wall,
        mock.connections()
    );
    Ok(())
}
