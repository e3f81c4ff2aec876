//! Embedding benchmark, per corpus file: decode, resample, features, inference (ms/patch),
//! total and x realtime (in-process, one ONNX Runtime thread), then the peak RSS of a child
//! process embedding that file alone (`chaarfm-super ingest --workers 1`).
//!
//! Run: `cargo bench -p chaarfm-tests --bench embed` (after `cargo build --release`).
//! Options: `--batch N`, `--threads N`, `--features-only`, `--no-rss`.
use std::time::Instant;

use chaarfm_child::{model, pipeline, InferOptions, Musicnn};
use chaarfm_tests::{binary, corpus_dir, references, TempDir};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let flag = |name: &str| args.iter().any(|a| a == name);
    let opts = InferOptions {
        threads: opt("--threads", 1),
        batch: opt("--batch", 1),
        ..Default::default()
    };
    let names: Vec<String> = references()
        .into_iter()
        .filter(|(_, r)| r.vector.is_some())
        .map(|(n, _)| n)
        .collect();

    if flag("--features-only") {
        for name in &names {
            let f = pipeline::features(&corpus_dir().join(name))?;
            let t = f.timings;
            println!(
                "{name:20} decode {:6.1} resample {:6.1} features {:5.1} ms",
                t.decode_ms, t.resample_ms, t.features_ms
            );
        }
        return Ok(());
    }

    let mut m = Musicnn::load(&model::resolve(None)?, &opts)?;
    // Warm-up, so the first file does not pay for ONNX Runtime's first run.
    pipeline::embed_file(&corpus_dir().join("caves.flac"), &mut m)?;
    println!(
        "{:20} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>10}",
        "file (threads ".to_string() + &opts.threads.to_string() + ")",
        "audio s",
        "decode",
        "resample",
        "features",
        "ms/patch",
        "total s",
        "x rt",
        "child MB"
    );
    let dir = TempDir::new("bench-embed");
    let (mut audio, mut wall) = (0.0, 0.0);
    for name in &names {
        let path = corpus_dir().join(name);
        let t = Instant::now();
        let e = pipeline::embed_file(&path, &mut m)?;
        let total = t.elapsed().as_secs_f64();
        audio += e.duration_s;
        wall += total;
        let rss = if flag("--no-rss") {
            String::from("-")
        } else {
            child_peak_mb(&dir, &path)
        };
        println!(
            "{name:20} {:8.1} {:7.0}ms {:7.0}ms {:8.0}ms {:9.1} {:8.2} {:7.1}x {:>10}",
            e.duration_s,
            e.timings.decode_ms,
            e.timings.resample_ms,
            e.timings.features_ms,
            e.timings.infer_ms / e.patches as f64,
            total,
            e.duration_s / total,
            rss
        );
    }
    println!(
        "all files: {audio:.0} s of audio in {wall:.1} s = {:.1}x realtime on one core",
        audio / wall
    );
    Ok(())
}

/// Peak RSS of the one child of `ingest --workers 1` on `path`, from its summary line.
fn child_peak_mb(dir: &TempDir, path: &std::path::Path) -> String {
    let out = dir.join("rss.jsonl");
    let _ = std::fs::remove_file(&out);
    let r = std::process::Command::new(binary())
        .args(["ingest", "--workers", "1", "--out"])
        .arg(&out)
        .arg(path)
        .output();
    r.ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split("child peak RSS ")
                .nth(1)
                .and_then(|s| s.split(' ').next().map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}
