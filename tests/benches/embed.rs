//! Embedding benchmark: per corpus file, decode+resample, features, inference (ms/patch),
//! total, x realtime. Run: `cargo bench -p chaarfm-tests --bench embed [-- --batch N]`.
use std::path::PathBuf;
use std::time::Instant;

use chaarfm_child::{model, pipeline, InferOptions, Musicnn};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let opts = InferOptions {
        threads: opt("--threads", 1),
        batch: opt("--batch", 8),
        ..Default::default()
    };
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    let mut m = Musicnn::load(&model::resolve(None)?, &opts)?;
    if args.iter().any(|a| a == "--features-only") {
        for name in ["awakening.mp3", "wz-track5.webm"] {
            let f = pipeline::features(&corpus.join(name))?;
            let t = f.timings;
            println!(
                "{name}: decode {:.0} resample {:.0} features {:.0} ms",
                t.decode_ms, t.resample_ms, t.features_ms
            );
        }
        return Ok(());
    }
    for name in ["awakening.mp3", "wz-track5.webm"] {
        let t = Instant::now();
        let e = pipeline::embed_file(&corpus.join(name), &mut m)?;
        let total = t.elapsed().as_secs_f64();
        println!(
            "{name}: decode {:.0} resample {:.0} features {:.0} infer {:.0} ms ({:.1} ms/patch, batch {}) total {:.2}s {:.1}x",
            e.timings.decode_ms, e.timings.resample_ms, e.timings.features_ms, e.timings.infer_ms,
            e.timings.infer_ms / e.patches as f64, opts.batch, total, e.duration_s / total
        );
    }
    Ok(())
}
