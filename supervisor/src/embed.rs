//! `chaarfm-super embed FILE...`: one JSON line per file on stdout, in input order,
//! computed by the pool (a file that crashes a decoder gives an error line, not a dead
//! command). Exit 0 when all succeeded, 1 when any failed, 2 when nothing could run
//! (the pool stopped: model, runtime...), deterministically.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use chaarfm_child::model;
use chaarfm_shared::ipc::JobOutput;
use chaarfm_shared::record::{FileStamp, JsonPath, Record, TagScore};

use crate::cli::EmbedArgs;
use crate::exit::Exit;
use crate::{batch, launch};

/// Why a named input is refused before it reaches a child (`None`: a regular file).
pub fn refuse_input(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) => Some(format!("cannot read the file: {e}")),
        Ok(m) if m.is_dir() => Some("is a directory, not an audio file".into()),
        Ok(m) if !m.is_file() => {
            Some("not a regular file (a FIFO, socket or device): give an audio file on disk".into())
        }
        Ok(_) => None,
    }
}

/// Runs `embed`.
pub async fn run(args: &EmbedArgs, model_path: Option<&Path>) -> anyhow::Result<Exit> {
    let mut results: Vec<Option<Record>> = vec![None; args.files.len()];
    let mut todo = Vec::new();
    for (i, f) in args.files.iter().enumerate() {
        match refuse_input(f) {
            Some(error) => results[i] = Some(failed(f, error, None)),
            None => todo.push((i, f.clone())),
        }
    }
    let mut printer = Printer::default();
    let mut all_ok = todo.len() == args.files.len();
    if !todo.is_empty() {
        let state_dir = crate::os::default_state_dir();
        let launch::Started {
            pool,
            task,
            children,
            ..
        } = launch::start_pool(&args.pool, model_path, &state_dir)?;
        let collected = batch::collect(&pool, todo, args.tags, children + 1, |i, r| {
            let path = &args.files[i];
            results[i] = Some(match r {
                Ok(out) => to_record(path, out, args.tags, None),
                Err(e) => {
                    all_ok = false;
                    tracing::warn!(path = %path.display(), error = %e, "file failed");
                    failed(path, e.to_string(), None)
                }
            });
            printer.print_ready(&results)
        })
        .await;
        pool.shutdown().await;
        let _ = task.await;
        let collected = collected?;
        if let Some(stop) = collected.stopped {
            printer.print_ready(&results)?;
            anyhow::bail!("{stop}");
        }
        if collected.interrupted {
            all_ok = false;
        }
    }
    printer.print_ready(&results)?;
    Ok(if all_ok { Exit::Ok } else { Exit::SomeFailed })
}

/// Prints the finished prefix of the results, so output order is input order.
#[derive(Default)]
struct Printer {
    next: usize,
}

impl Printer {
    fn print_ready(&mut self, results: &[Option<Record>]) -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while let Some(Some(r)) = results.get(self.next) {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n").context("writing to stdout")?;
            self.next += 1;
        }
        out.flush().context("writing to stdout")
    }
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

pub fn failed(file: &Path, error: String, stamp: Option<FileStamp>) -> Record {
    Record::Failed {
        path: JsonPath::from_path(file),
        error,
        file: stamp,
    }
}

pub fn to_record(file: &Path, out: JobOutput, tags: bool, stamp: Option<FileStamp>) -> Record {
    Record::Ok {
        path: JsonPath::from_path(file),
        tags: tags.then(|| top_tags(&out.tags, 5)),
        vector: out.vector,
        patches: out.patches as usize,
        duration_s: out.duration_s,
        file: stamp,
    }
}
