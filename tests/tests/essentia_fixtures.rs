//! Unit-level agreement with Essentia, against golden values that
//! tests/fixtures/make_fixtures.py computed with Essentia 2.1b6.

use chaarfm_child::features::{
    self, frame_count, hann_window, patch_count, MelFilterbank, MelFrames,
};
use chaarfm_child::{model, InferOptions, Musicnn};
use chaarfm_tests::{cosine, synthetic_signal};
use serde_json::Value;

fn fixtures() -> Value {
    serde_json::from_str(include_str!("../fixtures/essentia_features.json")).expect("fixture json")
}

fn pairs(v: &Value) -> Vec<(usize, usize)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

#[test]
fn frame_counts_match_essentia_framecutter() {
    for (n, frames) in pairs(&fixtures()["frame_counts"]) {
        assert_eq!(frame_count(n), frames, "{n} samples");
    }
}

#[test]
fn patch_counts_match_essentia_predict() {
    for (n, patches) in pairs(&fixtures()["patch_counts"]) {
        assert_eq!(patch_count(frame_count(n)), patches, "{n} samples");
    }
}

#[test]
fn window_matches_essentia_hann() {
    let want: Vec<f64> = fixtures()["window"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let got = hann_window();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() < 1e-6,
            "window[{i}] = {g}, Essentia {w}"
        );
    }
}

#[test]
fn filterbank_matches_essentia_melbands() {
    let fx = fixtures();
    let fb = MelFilterbank::new();
    let mut want = vec![vec![0f64; features::BINS]; features::BANDS];
    for e in fx["filterbank_nonzero"].as_array().unwrap() {
        want[e[0].as_u64().unwrap() as usize][e[1].as_u64().unwrap() as usize] =
            e[2].as_f64().unwrap();
    }
    for (band, row) in want.iter().enumerate() {
        for (bin, &w) in row.iter().enumerate() {
            let g = f64::from(fb.weight(band, bin));
            assert!(
                (g - w).abs() <= 1e-6 + 1e-4 * w.abs(),
                "band {band} bin {bin}: {g}, Essentia {w}"
            );
        }
    }
}

#[test]
fn mel_frames_match_essentia_tensorflow_input_musicnn() {
    let fx = fixtures();
    let spec = &fx["mel_frames"];
    let n = spec["samples"].as_u64().unwrap() as usize;
    let mut frames = MelFrames::new();
    frames.push(&synthetic_signal(n));
    let mel = frames.finish();
    assert_eq!(mel.frames, spec["frames"].as_u64().unwrap() as usize);
    let mut worst = 0f64;
    for (k, row) in spec["rows"].as_object().unwrap() {
        let k: usize = k.parse().unwrap();
        for (b, w) in row.as_array().unwrap().iter().enumerate() {
            let d = (f64::from(mel.frame(k)[b]) - w.as_f64().unwrap()).abs();
            worst = worst.max(d);
        }
    }
    println!("largest difference to Essentia's log-mel values: {worst:e}");
    assert!(worst < 1e-3, "log-mel differs from Essentia by {worst}");
}

#[test]
fn embedding_of_the_test_signal_matches_essentia() {
    let fx = fixtures();
    let e = &fx["embedding_80000"];
    let want: Vec<f32> = e["mean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let mut frames = MelFrames::new();
    frames.push(&synthetic_signal(80_000));
    let mel = frames.finish();
    let mut m = Musicnn::load(&model::resolve(None).unwrap(), &InferOptions::default()).unwrap();
    let p = m.predict(&mel).unwrap();
    assert_eq!(p.patches, e["patches"].as_u64().unwrap() as usize);
    let c = cosine(&p.vector, &want);
    println!("synthetic 5 s signal: cosine {c:.7}");
    assert!(c >= 0.99999, "cosine {c}");
}
