//! The `embed` command's contract: one JSON line per file in order, exit status 1 when any
//! file failed, tags on request, clear errors for a bad model path.

use std::process::Command;

use chaarfm_shared::record::Record;
use chaarfm_tests::{binary, corpus_dir, TempDir};

#[test]
fn embed_prints_one_line_per_file_and_fails_when_one_fails() {
    let dir = TempDir::new("cli");
    let bad = dir.join("bad.mp3");
    std::fs::write(&bad, b"definitely not audio").unwrap();
    let good = corpus_dir().join("caves.flac");
    let out = Command::new(binary())
        .arg("embed")
        .arg("--tags")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Record> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    match &lines[0] {
        Record::Ok {
            path,
            vector,
            patches,
            tags: Some(tags),
            ..
        } => {
            assert!(path.to_string().ends_with("caves.flac"));
            assert_eq!(vector.len(), 200);
            assert_eq!(*patches, 38);
            assert_eq!(tags.len(), 5);
            assert!(tags.windows(2).all(|w| w[0].score >= w[1].score));
        }
        other => panic!("expected a vector with tags, got {other:?}"),
    }
    assert!(
        matches!(&lines[1], Record::Failed { path, .. } if path.to_string().ends_with("bad.mp3"))
    );

    let ok = Command::new(binary())
        .arg("embed")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
}

#[test]
fn a_wrong_model_path_is_a_clear_error() {
    let dir = TempDir::new("cli-model");
    let fake = dir.join("fake.onnx");
    std::fs::write(&fake, b"nope").unwrap();
    // Several files, several times: the exit status must not depend on which of the
    // pool's stop and a job's answer arrives first (it once did, ~1 run in 4).
    for _ in 0..4 {
        let out = Command::new(binary())
            .args(["embed", "--workers", "2", "--model"])
            .arg(&fake)
            .arg(corpus_dir().join("caves.flac"))
            .arg(corpus_dir().join("palace.wav"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("fake.onnx") && err.contains("expected"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }

    let out = Command::new(binary())
        .arg("embed")
        .arg(corpus_dir().join("caves.flac"))
        .env("CHAARFM_MODEL", dir.join("none.onnx"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CHAARFM_MODEL"));

    let out = Command::new(binary())
        .arg("embed")
        .arg(corpus_dir().join("caves.flac"))
        .env("ORT_DYLIB_PATH", dir.join("libnothing.so"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ORT_DYLIB_PATH"));
}
