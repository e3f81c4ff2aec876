//! Embedding benchmark, both engines side by side, per corpus file: decode + features,
//! resample, inference in ms per patch for the per-patch and the shared engine (best of
//! two alternating runs on the same features), x realtime of each (in-process, one ONNX
//! Runtime thread), then the peak RSS of a child process embedding that file alone
//! (`chaarfm-super ingest --workers 1 --engine ...`), and on a 30- and a 120-minute file.
//!
//! Run: `cargo bench -p chaarfm-tests --bench embed` (after `cargo build --release`).
//! Options: `--batch N`, `--threads N`, `--features-only`, `--no-rss`.
use std::time::Instant;

use chaarfm_child::{model, pipeline, Engine, InferOptions, Musicnn};
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

    let load = |engine| {
        Musicnn::load(
            &model::resolve(None)?,
            &InferOptions {
                engine,
                ..opts.clone()
            },
        )
    };
    let (mut patch, mut shared) = (load(Engine::Patch)?, load(Engine::Shared)?);
    // Warm-up, so the first file does not pay for ONNX Runtime's first run.
    let warm = pipeline::features(&corpus_dir().join("caves.flac"))?;
    patch.predict(&warm.mel)?;
    shared.predict(&warm.mel)?;
    println!(
        "{:20} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9}",
        "file (threads ".to_string() + &opts.threads.to_string() + ")",
        "audio s",
        "decode",
        "resample",
        "ms/patch",
        "ms/patch",
        "shared",
        "x rt",
        "x rt",
        "child MB",
        "child MB"
    );
    println!(
        "{:20} {:>8} {:>8} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8} {:>9} {:>9}",
        "", "", "+feats", "", "patch", "shared", "speedup", "patch", "shared", "patch", "shared"
    );
    let dir = TempDir::new("bench-embed");
    let (mut audio, mut wall_patch, mut wall_shared) = (0.0, 0.0, 0.0);
    let (mut infer_patch, mut infer_shared) = (0.0, 0.0);
    for name in &names {
        let path = corpus_dir().join(name);
        let t = Instant::now();
        let f = pipeline::features(&path)?;
        let front = t.elapsed().as_secs_f64();
        let n = f.mel.patches() as f64;
        let run = |m: &mut Musicnn| -> anyhow::Result<f64> {
            // Alternating engines, best of two: the machine's noise hits both alike.
            let mut best = f64::MAX;
            for _ in 0..2 {
                let t = Instant::now();
                m.predict(&f.mel)?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let (ip, is) = (run(&mut patch)?, run(&mut shared)?);
        let secs = f.duration_s();
        audio += secs;
        wall_patch += front + ip;
        wall_shared += front + is;
        infer_patch += ip;
        infer_shared += is;
        let rss = |engine: &str| {
            if flag("--no-rss") {
                String::from("-")
            } else {
                child_peak_mb(&dir, &path, engine)
            }
        };
        println!(
            "{name:20} {:8.1} {:7.0}ms {:8.0}ms {:9.1} {:9.1} {:6.2}x {:7.1}x {:7.1}x {:>9} {:>9}",
            secs,
            f.timings.decode_ms + f.timings.features_ms,
            f.timings.resample_ms,
            ip * 1e3 / n,
            is * 1e3 / n,
            ip / is,
            secs / (front + ip),
            secs / (front + is),
            rss("patch"),
            rss("shared")
        );
    }
    println!(
        "all files, one core: {audio:.0} s of audio; per-patch engine {wall_patch:.1} s = {:.1}x realtime, shared engine {wall_shared:.1} s = {:.1}x realtime; inference alone {:.2}x faster shared",
        audio / wall_patch,
        audio / wall_shared,
        infer_patch / infer_shared
    );
    if !flag("--no-rss") {
        // Memory must not grow with the track: frames stream through the model.
        for minutes in [30, 120] {
            let long = long_file(&dir, f64::from(minutes) * 60.0)?;
            println!(
                "a {minutes}-minute file: child peak RSS {} MB per-patch engine, {} MB shared engine",
                child_peak_mb(&dir, &long, "patch"),
                child_peak_mb(&dir, &long, "shared")
            );
            std::fs::remove_file(&long)?;
        }
    }
    Ok(())
}

/// A WAV of `seconds` of real music: the longest corpus file, decoded and repeated.
fn long_file(dir: &TempDir, seconds: f64) -> anyhow::Result<std::path::PathBuf> {
    let mut stream =
        chaarfm_child::decode::AudioStream::open(&corpus_dir().join("wz-track5.webm"))?;
    let rate = stream.sample_rate();
    let (mut pcm, mut chunk) = (Vec::new(), Vec::new());
    while stream.next_chunk(&mut chunk)? {
        pcm.extend_from_slice(&chunk);
    }
    let want = (seconds * f64::from(rate)) as usize;
    let mut all = Vec::with_capacity(want);
    while all.len() < want {
        let take = (want - all.len()).min(pcm.len());
        all.extend_from_slice(&pcm[..take]);
    }
    let path = dir.join(&format!("{:.0}-minutes.wav", seconds / 60.0));
    chaarfm_tests::wav::write(&path, rate, 1, chaarfm_tests::wav::Encoding::Pcm16, &all)?;
    Ok(path)
}

/// Peak RSS of the one child of `ingest --workers 1 --engine ENGINE` on `path`, from its
/// summary line.
fn child_peak_mb(dir: &TempDir, path: &std::path::Path, engine: &str) -> String {
    let out = dir.join("rss.jsonl");
    let _ = std::fs::remove_file(&out);
    let r = std::process::Command::new(binary())
        .args(["ingest", "--workers", "1", "--engine", engine, "--out"])
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
