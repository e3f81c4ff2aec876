//! Pool benchmark: `ingest` of the corpus x4 (24 jobs, ~83 min of audio) with one child and
//! with `--workers auto`; prints x realtime for each, the scaling efficiency, IPC overhead
//! per job, and the peak RSS of the supervisor and of a child (from ingest's summary).
//!
//! Run: `cargo bench -p chaarfm-tests --bench pool [-- --engine patch|shared]` (after
//! `cargo build --release`).
use std::path::PathBuf;

use chaarfm_tests::{binary, corpus_dir, references, TempDir};

struct Run {
    xrt: f64,
    wall: f64,
    sup_mb: f64,
    child_mb: f64,
    overhead_ms: f64,
}

fn number_after(text: &str, key: &str) -> f64 {
    text.split(key)
        .nth(1)
        .and_then(|s| {
            s.trim_start()
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
        })
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

fn ingest(files: &[PathBuf], workers: &str, engine: &str, dir: &TempDir) -> anyhow::Result<Run> {
    let out = dir.join(&format!("out-{workers}.jsonl"));
    let _ = std::fs::remove_file(&out);
    let o = std::process::Command::new(binary())
        .args(["ingest", "--workers", workers, "--engine", engine, "--out"])
        .arg(&out)
        .args(files)
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "ingest failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    print!("{s}");
    Ok(Run {
        xrt: number_after(&s, "s = "),
        wall: number_after(&s, "of audio in "),
        sup_mb: number_after(&s, "supervisor peak RSS "),
        child_mb: number_after(&s, "child peak RSS "),
        overhead_ms: number_after(&s, "IPC overhead "),
    })
}

fn main() -> anyhow::Result<()> {
    let dir = TempDir::new("bench-pool");
    let mut files = Vec::new();
    for copy in 0..4 {
        for (name, r) in references() {
            if r.vector.is_none() {
                continue;
            }
            // Distinct paths for the same audio, so each copy is a job of its own.
            let link = dir.join(&format!("{copy}-{name}"));
            std::fs::copy(corpus_dir().join(&name), &link)?;
            files.push(link);
        }
    }
    let args: Vec<String> = std::env::args().collect();
    let engine = args
        .iter()
        .position(|a| a == "--engine")
        .and_then(|i| args.get(i + 1))
        .map_or("shared", String::as_str);
    println!("{} jobs, --engine {engine}", files.len());
    let one = ingest(&files, "1", engine, &dir)?;
    let auto = ingest(&files, "auto", engine, &dir)?;
    println!(
        "--workers 1:    {:6.1}x realtime, {:6.1} s",
        one.xrt, one.wall
    );
    println!(
        "--workers auto: {:6.1}x realtime, {:6.1} s",
        auto.xrt, auto.wall
    );
    println!(
        "scaling: {:.2}x with auto (target >= 1.9x on 2 cores)",
        auto.xrt / one.xrt
    );
    println!(
        "IPC overhead: {:.2} ms/job with 1 child, {:.2} ms/job with auto (target < 1 ms)",
        one.overhead_ms, auto.overhead_ms
    );
    println!(
        "supervisor peak RSS: {:.1} MB (target <= 30); child peak RSS: {:.1} MB (target <= 150)",
        one.sup_mb.max(auto.sup_mb),
        one.child_mb.max(auto.child_mb)
    );
    Ok(())
}
