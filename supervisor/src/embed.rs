//! `chaarfm-super embed FILE...`: one JSON line per file on stdout.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use chaarfm_child::{embed_file, model, Embedding, InferOptions, Musicnn};
use chaarfm_shared::record::{Record, TagScore};

use crate::cli::EmbedArgs;

/// Runs `embed`; returns whether every file succeeded.
pub fn run(args: &EmbedArgs, model_path: Option<&Path>) -> anyhow::Result<bool> {
    let path = model::resolve(model_path)?;
    let mut musicnn = Musicnn::load(&path, &InferOptions::default())
        .with_context(|| format!("loading the model {}", path.display()))?;
    let stdout = std::io::stdout();
    let mut all_ok = true;
    for file in &args.files {
        let record = match embed_file(file, &mut musicnn) {
            Ok(e) => to_record(file, e, args.tags),
            Err(e) => {
                all_ok = false;
                tracing::warn!(path = %file.display(), error = %e, "file failed");
                Record::Failed {
                    path: file.display().to_string(),
                    error: e.to_string(),
                }
            }
        };
        let mut out = stdout.lock();
        serde_json::to_writer(&mut out, &record)?;
        out.write_all(b"\n")?;
        out.flush().context("writing to stdout")?;
    }
    Ok(all_ok)
}

/// The five strongest tags, strongest first.
pub fn top_tags(scores: &[f32], n: usize) -> Vec<TagScore> {
    let names = &model::manifest().tags;
    let mut idx: Vec<usize> = (0..scores.len().min(names.len())).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    idx.into_iter()
        .take(n)
        .map(|i| TagScore {
            tag: names[i].clone(),
            score: scores[i],
        })
        .collect()
}

pub fn to_record(file: &Path, e: Embedding, tags: bool) -> Record {
    Record::Ok {
        path: file.display().to_string(),
        tags: tags.then(|| top_tags(&e.tags, 5)),
        vector: e.vector,
        patches: e.patches,
        duration_s: e.duration_s,
    }
}
