//! Every corpus file with an Essentia reference reaches cosine >= 0.9999 (MUSICNN.md shows
//! 1.0000000 is reachable); the too-short clip gives the documented error.

use chaarfm_child::{embed_file, model, InferOptions, Musicnn};
use chaarfm_tests::{corpus_dir, cosine, references};

#[test]
fn corpus_matches_essentia() {
    let mut m = Musicnn::load(
        &model::resolve(None).expect("model"),
        &InferOptions::default(),
    )
    .expect("load model");
    let refs = references();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, r) in &refs {
        let path = corpus_dir().join(name);
        let result = embed_file(&path, &mut m);
        match (&r.vector, result) {
            (Some(want), Ok(got)) => {
                checked += 1;
                let c = cosine(&got.vector, want);
                println!(
                    "{name:22} cosine {c:.7}  patches {} (Essentia {})",
                    got.patches, r.patches
                );
                if c < 0.9999 {
                    failures.push(format!("{name}: cosine {c:.7} < 0.9999"));
                }
                if got.patches != r.patches {
                    failures.push(format!(
                        "{name}: {} patches, Essentia {}",
                        got.patches, r.patches
                    ));
                }
                assert!(got.vector.iter().all(|v| v.is_finite()));
            }
            (None, Err(e)) => {
                println!("{name:22} error: {e}");
                assert_eq!(
                    e.to_string(),
                    format!("audio too short: {:.2} s, need at least 2.99 s", r.seconds)
                );
            }
            (Some(_), Err(e)) => failures.push(format!("{name}: failed: {e}")),
            (None, Ok(_)) => {
                failures.push(format!("{name}: Essentia gives no vector, we gave one"))
            }
        }
    }
    assert!(
        checked >= 6,
        "only {checked} corpus files had reference vectors"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn artist_and_title_come_from_the_files_own_tags() {
    use chaarfm_child::decode::{AudioStream, FileTags};
    let tags = |name: &str| {
        let mut s = AudioStream::open(&corpus_dir().join(name)).expect("open");
        let mut chunk = Vec::new();
        while s.next_chunk(&mut chunk).expect("decode") {}
        s.file_tags()
    };
    assert_eq!(
        tags("enemy-unknown.ogg"),
        FileTags {
            artist: Some("Maxstack".into()),
            title: Some("Enemy Unknown".into())
        }
    );
    assert_eq!(
        tags("awakening.mp3"),
        FileTags::default(),
        "awakening.mp3 has no tags (ffprobe agrees)"
    );
}
