//! Inputs a worker meets in the wild: every WAV flavour decodes and agrees; broken,
//! silent, NaN or unsupported files give a clear per-file error, never a panic or a NaN.

use std::path::Path;

use chaarfm_child::{embed_file, model, EmbedError, Embedding, InferOptions, Musicnn};
use chaarfm_tests::wav::{self, Encoding};
use chaarfm_tests::{corpus_dir, cosine, music_like, TempDir};

fn model() -> Musicnn {
    Musicnn::load(
        &model::resolve(None).expect("model"),
        &InferOptions::default(),
    )
    .expect("load model")
}

fn embed(m: &mut Musicnn, p: &Path) -> Result<Embedding, EmbedError> {
    let r = embed_file(p, m);
    if let Ok(e) = &r {
        assert!(
            e.vector.iter().all(|v| v.is_finite()),
            "{}: NaN in vector",
            p.display()
        );
    }
    r
}

fn err(m: &mut Musicnn, p: &Path) -> String {
    match embed(m, p) {
        Ok(e) => panic!(
            "{}: expected an error, got a vector of {} patches",
            p.display(),
            e.patches
        ),
        Err(e) => e.to_string(),
    }
}

fn interleave(frames: &[[f32; 2]], channels: u16) -> Vec<f32> {
    frames
        .iter()
        .flat_map(|f| (0..channels as usize).map(move |c| f[c % 2]))
        .collect()
}

#[test]
fn wav_bit_depths_rates_and_channel_counts_agree() {
    let dir = TempDir::new("wavs");
    let mut m = model();
    let reference = {
        let p = dir.join("ref.wav");
        wav::write(
            &p,
            44_100,
            2,
            Encoding::Float32,
            &interleave(&music_like(44_100, 6.0), 2),
        )
        .unwrap();
        embed(&mut m, &p).unwrap()
    };
    for (enc, rate, channels) in [
        (Encoding::Pcm16, 44_100, 2),
        (Encoding::Pcm24, 44_100, 2),
        (Encoding::Pcm32, 44_100, 2),
        (Encoding::Pcm16, 44_100, 6),
        (Encoding::Pcm16, 44_100, 1),
    ] {
        let p = dir.join(&format!("{enc:?}-{rate}-{channels}.wav"));
        let mut frames = music_like(rate, 6.0);
        if channels == 1 {
            // Mono: the mean of the two channels, so the downmix of the reference matches.
            for f in frames.iter_mut() {
                let m = (f[0] + f[1]) / 2.0;
                *f = [m, m];
            }
        }
        wav::write(&p, rate, channels, enc, &interleave(&frames, channels)).unwrap();
        let e = embed(&mut m, &p).unwrap();
        let c = cosine(&e.vector, &reference.vector);
        println!("{enc:?} {rate} Hz {channels} ch: cosine {c:.6} to float stereo");
        assert!(c > 0.999, "{enc:?} {rate} Hz {channels} ch: cosine {c}");
        assert_eq!(e.patches, reference.patches);
    }
    // Other sample rates decode and give a vector of the right length.
    for rate in [8_000, 16_000, 22_050, 48_000, 96_000] {
        let p = dir.join(&format!("rate-{rate}.wav"));
        wav::write(
            &p,
            rate,
            2,
            Encoding::Pcm16,
            &interleave(&music_like(rate, 4.0), 2),
        )
        .unwrap();
        let e = embed(&mut m, &p).unwrap();
        assert!(
            (e.duration_s - 4.0).abs() < 0.01,
            "{rate} Hz: {} s",
            e.duration_s
        );
        assert_eq!(e.vector.len(), 200);
    }
}

#[test]
fn broken_files_give_clear_errors() {
    let dir = TempDir::new("broken");
    let mut m = model();

    let empty = dir.join("empty.mp3");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(err(&mut m, &empty), "file is empty");

    let garbage = dir.join("garbage.mp3");
    let mut s = 7u32;
    let bytes: Vec<u8> = (0..200_000)
        .map(|_| {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (s >> 16) as u8
        })
        .collect();
    std::fs::write(&garbage, &bytes).unwrap();
    let e = err(&mut m, &garbage);
    assert!(
        e.contains("not a supported audio file")
            || e.contains("no decodable audio")
            // Named .mp3, unknown to every reader: corrupt, not handed to ffmpeg.
            || e.starts_with("not a valid MP3 file")
            // ffmpeg installed (the tests' set-up): the fallback refused it too.
            || e.contains("that symphonia or ffmpeg can read"),
        "{e}"
    );

    let missing = dir.join("missing.flac");
    assert!(err(&mut m, &missing).starts_with("cannot open file"));

    // A WAV claiming MPEG-in-WAV (format tag 0x0050): a codec we do not decode.
    let odd = dir.join("mpeg-in-wav.wav");
    wav::write_raw(&odd, 0x0050, 44_100, 2, 16, &vec![0u8; 400_000]).unwrap();
    let e = err(&mut m, &odd);
    assert!(
        e.contains("unsupported")
            || e.contains("not a supported")
            // ffmpeg installed (the tests' set-up): it tried, and found nothing to decode.
            || e.contains("that symphonia or ffmpeg can read")
            || e.contains("no decodable audio"),
        "{e}"
    );

    let silent = dir.join("silent.wav");
    wav::write(
        &silent,
        44_100,
        2,
        Encoding::Pcm16,
        &vec![0.0; 44_100 * 2 * 5],
    )
    .unwrap();
    assert!(err(&mut m, &silent).starts_with("audio is silent"));

    let nan = dir.join("nan.wav");
    let mut frames = interleave(&music_like(44_100, 5.0), 2);
    frames[100_000] = f32::NAN;
    wav::write(&nan, 44_100, 2, Encoding::Float32, &frames).unwrap();
    assert!(err(&mut m, &nan).contains("non-finite"));

    let short = dir.join("short.wav");
    wav::write(
        &short,
        44_100,
        1,
        Encoding::Pcm16,
        &music_like(44_100, 1.5)
            .iter()
            .map(|f| f[0])
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(
        err(&mut m, &short),
        "audio too short: 1.50 s, need at least 2.99 s"
    );
}

#[test]
fn truncated_files_use_what_decodes() {
    let dir = TempDir::new("truncated");
    let mut m = model();
    for name in [
        "awakening.mp3",
        "caves.flac",
        "coherence.m4a",
        "enemy-unknown.ogg",
        "wz-track5.webm",
    ] {
        let bytes = std::fs::read(corpus_dir().join(name)).unwrap();
        let cut = dir.join(&format!("cut-{name}"));
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 5]).unwrap();
        match embed(&mut m, &cut) {
            Ok(e) => {
                println!(
                    "{name} cut to 40%: {} patches, {:.1} s",
                    e.patches, e.duration_s
                );
                assert!(e.patches > 0);
            }
            // An MP4 whose index sits at the end has nothing decodable when cut: an error, not a panic.
            Err(e) => {
                println!("{name} cut to 40%: {e}");
                assert!(name.ends_with(".m4a"), "{name}: {e}");
            }
        }
    }
}

/// Only audio reaches the model: a web page saved as `.mp3` is refused as corrupt (not
/// handed to ffmpeg, which decoded one as minutes of speech), and what ffmpeg does
/// decode must be a music codec, so GSM speech in a WAV is refused too.
#[cfg(unix)]
#[test]
fn a_web_page_or_speech_never_becomes_a_vector() {
    let dir = TempDir::new("not-music");
    let mut m = model();
    let page: String = (0..200)
        .map(|i| format!("<p>Sorry, page {i} was not found. <a href=\"/\">Home</a></p>\n"))
        .collect();
    let html =
        format!("<!DOCTYPE html><html><head><title>404</title></head><body>{page}</body></html>");
    let mp3 = dir.join("page.mp3");
    std::fs::write(&mp3, &html).unwrap();
    let e = err(&mut m, &mp3);
    assert!(e.starts_with("not a valid MP3 file ("), "{e}");
    let bin = dir.join("page.bin");
    std::fs::write(&bin, &html).unwrap();
    err(&mut m, &bin);
    // GSM 06.10 in a WAV: symphonia reads the container, not the codec; ffmpeg decodes
    // it, and it is refused by its codec. (scripts/setup.sh installs ffmpeg.)
    let speech = dir.join("speech.wav");
    let st = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=20",
        ])
        .args(["-ar", "8000", "-ac", "1", "-c:a", "libgsm_ms"])
        .arg(&speech)
        .status()
        .expect("ffmpeg runs (scripts/setup.sh installs it)");
    assert!(st.success(), "ffmpeg could not encode GSM");
    let e = err(&mut m, &speech);
    assert!(e.contains("\"gsm_ms\", not a music codec"), "{e}");
}
