//! Every format a music library holds, against Essentia's vectors on the same files:
//! symphonia's own decoders (AIFF, ALAC, CAF, MP2) and the ffmpeg fallback (WavPack, WMA,
//! AC3). The files are made at test time by `tests/fixtures/formats.py make` with
//! ffmpeg (installed by scripts/setup.sh for the tests; the product never needs it);
//! Essentia's vectors are `tests/fixtures/format_refs.json`.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use chaarfm_child::{embed_file, model, InferOptions, Musicnn};
use chaarfm_tests::{binary, cosine, TempDir};
use serde_json::Value;

fn make_files(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/formats.py");
    let st = Command::new("python3")
        .arg(&script)
        .arg("make")
        .arg(dir)
        .status()
        .expect("python3 runs the fixture script");
    assert!(
        st.success(),
        "making the format files failed: is ffmpeg installed? (scripts/setup.sh installs it)"
    );
}

fn references() -> (String, BTreeMap<String, Vec<f32>>) {
    let v: Value = serde_json::from_str(include_str!("../fixtures/format_refs.json")).unwrap();
    let vectors = v["vectors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let vec = v
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            (k.clone(), vec)
        })
        .collect();
    (v["ffmpeg"].as_str().unwrap_or("").to_string(), vectors)
}

#[test]
fn every_format_matches_essentia_on_the_same_file() {
    let dir = TempDir::new("formats");
    make_files(dir.path());
    let (made_with, refs) = references();
    let here = Command::new("ffmpeg").arg("-version").output().unwrap();
    let here = String::from_utf8_lossy(&here.stdout);
    println!(
        "references made with: {made_with}\nfiles made with:      {}",
        here.lines().next().unwrap_or("")
    );
    let mut m = Musicnn::load(
        &model::resolve(None).expect("model"),
        &InferOptions::default(),
    )
    .expect("load model");
    let mut failures = Vec::new();
    for (name, want) in &refs {
        match embed_file(&dir.join(name), &mut m) {
            Ok(got) => {
                let c = cosine(&got.vector, want);
                println!("{name:12} cosine {c:.7}  patches {}", got.patches);
                if c < 0.9999 {
                    failures.push(format!("{name}: cosine {c:.7}"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert_eq!(refs.len(), 7);
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Runs `embed FILE` with `path_env` as PATH (and no CHAARFM_FFMPEG); the one JSON line.
fn embed_line(file: &Path, path_env: &str) -> Value {
    let out = Command::new(binary())
        .args(["embed", "--workers", "1"])
        .arg(file)
        .env_remove("CHAARFM_FFMPEG")
        .env("PATH", path_env)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn without_ffmpeg_the_error_names_the_format_and_the_fix() {
    let dir = TempDir::new("formats-no-ffmpeg");
    let wma = dir.join("song.wma");
    // Not even ffmpeg is needed to see the refusal: symphonia refuses any bytes so named.
    std::fs::write(&wma, vec![0x30u8; 4096]).unwrap();
    let empty = dir.join("bin");
    std::fs::create_dir_all(&empty).unwrap();
    let line = embed_line(&wma, &empty.display().to_string());
    let e = line["error"].as_str().unwrap();
    assert!(
        e.contains(".wma") && e.contains("installing ffmpeg adds WMA"),
        "{e}"
    );
    // With ffmpeg there, a file nothing can read still gets one clear line.
    let junk = dir.join("mystery.xyz");
    std::fs::write(&junk, b"neither audio nor anything else").unwrap();
    let line = embed_line(&junk, &std::env::var("PATH").unwrap_or_default());
    let e = line["error"].as_str().unwrap();
    assert!(
        e.starts_with("not an audio file that symphonia or ffmpeg can read (.xyz: ")
            && !e.contains("installing ffmpeg"),
        "{e}"
    );
}
