//! `chaarfm-super embed FILE...`: one JSON line per file on stdout, in input order,
//! computed by the pool (a file that crashes a decoder gives an error line, not a dead
//! command).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use chaarfm_child::model;
use chaarfm_shared::ipc::JobOutput;
use chaarfm_shared::record::{FileStamp, Record, TagScore};
use tokio::task::JoinSet;

use crate::cli::EmbedArgs;
use crate::launch;

/// Runs `embed`; returns whether every file succeeded.
pub async fn run(args: &EmbedArgs, model_path: Option<&Path>) -> anyhow::Result<bool> {
    let launch::Started { pool, task, .. } = launch::start_pool(&args.pool, model_path)?;
    let mut set = JoinSet::new();
    for (i, f) in args.files.iter().enumerate() {
        let pool = pool.clone();
        let path = f.display().to_string();
        let tags = args.tags;
        set.spawn(async move { (i, pool.embed(path, tags).await) });
    }
    let mut results: Vec<Option<Record>> = vec![None; args.files.len()];
    let mut next = 0;
    let mut all_ok = true;
    let stdout = std::io::stdout();
    loop {
        let joined = tokio::select! {
            j = set.join_next() => j,
            msg = pool.fatal() => anyhow::bail!("{msg}"),
        };
        let Some(joined) = joined else { break };
        let (i, result) = joined.context("embed task")?;
        let path = &args.files[i];
        results[i] = Some(match result {
            Ok(out) => to_record(path, out, args.tags, None),
            Err(e) => {
                all_ok = false;
                tracing::warn!(path = %path.display(), error = %e, "file failed");
                Record::Failed {
                    path: path.display().to_string(),
                    error: e.to_string(),
                    file: None,
                }
            }
        });
        // Print the finished prefix, so output order is input order.
        let mut out = stdout.lock();
        while let Some(Some(r)) = results.get(next) {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
            next += 1;
        }
        out.flush().context("writing to stdout")?;
    }
    pool.shutdown().await;
    let _ = task.await;
    Ok(all_ok)
}

/// The `n` strongest tags, strongest first.
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

pub fn to_record(file: &Path, out: JobOutput, tags: bool, stamp: Option<FileStamp>) -> Record {
    Record::Ok {
        path: file.display().to_string(),
        tags: tags.then(|| top_tags(&out.tags, 5)),
        vector: out.vector,
        patches: out.patches as usize,
        duration_s: out.duration_s,
        file: stamp,
    }
}
