//! `chaarfm-super ingest PATH... --out vectors.jsonl`: every audio file under PATHs to one
//! JSON line, appended and flushed as each finishes.
//!
//! Resumable: a file whose path, size and mtime are already in the output is skipped.
//! First Ctrl-C or SIGTERM: no new jobs, the ones in flight finish and are written, a
//! summary is printed, exit 0. A second one exits at once.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use chaarfm_shared::record::{FileStamp, Record};
use tokio::task::JoinSet;

use crate::cli::IngestArgs;
use crate::{embed, launch, signals};

/// Extensions picked up when walking folders (files named explicitly are always tried).
const AUDIO_EXTENSIONS: &[&str] = &[
    "mp3", "m4a", "mp4", "aac", "ogg", "oga", "opus", "flac", "wav", "wave", "webm", "mka", "mkv",
];

/// Audio files under `paths`, in a stable order. Symlinked folders are not followed (no
/// loops); explicitly named files are taken whatever their extension.
pub fn walk(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            walk_dir(p, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            walk_dir(&path, out)?;
        } else if is_audio(&path)
            && std::fs::metadata(&path)
                .map(|m| m.is_file())
                .unwrap_or(false)
        {
            out.push(path);
        }
    }
    Ok(())
}

fn is_audio(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Size and mtime of `p`.
pub fn stamp(p: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(p).ok()?;
    let mtime_ns = m
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos() as u64;
    Some(FileStamp {
        size: m.len(),
        mtime_ns,
    })
}

/// Files already in the output, and whether its last line lacks a newline (a write cut
/// short by a crash): the next record must then start on a fresh line.
fn already_done(out: &Path) -> anyhow::Result<(HashSet<(String, FileStamp)>, bool)> {
    let mut done = HashSet::new();
    let f = match std::fs::File::open(out) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((done, false)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", out.display())),
    };
    for line in std::io::BufReader::new(f).split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", out.display()))?;
        // A line cut short by a crash does not parse: that file is simply done again.
        if let Ok(r) = serde_json::from_slice::<Record>(&line) {
            if let Some(s) = r.file() {
                done.insert((r.path().to_string(), s));
            }
        }
    }
    let len = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let needs_newline = len > 0 && {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(out)?;
        f.seek(SeekFrom::End(-1))?;
        let mut b = [0u8; 1];
        f.read_exact(&mut b)?;
        b[0] != b'\n'
    };
    Ok((done, needs_newline))
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Self {
            bar,
            last_line: Instant::now(),
        }
    }

    fn update(
        &mut self,
        done: u64,
        total: u64,
        audio_s: f64,
        started: Instant,
        alive: usize,
        restarts: usize,
    ) {
        let xrt = audio_s / started.elapsed().as_secs_f64().max(1e-9);
        let msg = format!("{xrt:.1}x realtime, {alive} children, {restarts} restarts");
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(msg);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(10) => {
                self.last_line = Instant::now();
                tracing::info!("progress: {done}/{total} files, {msg}");
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Runs `ingest`. Returns normally after a drain too (exit 0).
pub async fn run(args: &IngestArgs, model_path: Option<&Path>) -> anyhow::Result<()> {
    let files = walk(&args.paths)?;
    let (done_before, needs_newline) = already_done(&args.out)?;
    let mut todo: Vec<(PathBuf, Option<FileStamp>)> = files
        .iter()
        .map(|p| (p.clone(), stamp(p)))
        .filter(|(p, s)| s.is_none_or(|s| !done_before.contains(&(p.display().to_string(), s))))
        .collect();
    // Longest first (by size): the last jobs are short, so no core idles at the end.
    todo.sort_by_key(|(_, s)| std::cmp::Reverse(s.map(|s| s.size).unwrap_or(0)));
    let skipped = files.len() - todo.len();
    tracing::info!(
        "{} audio file(s), {skipped} already in {}, {} to do",
        files.len(),
        args.out.display(),
        todo.len()
    );

    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("cannot open {} for appending", args.out.display()))?;
    if needs_newline {
        out.write_all(b"\n")?;
    }
    if todo.is_empty() {
        println!(
            "ingest: nothing to do ({skipped} file(s) already in {})",
            args.out.display()
        );
        return Ok(());
    }

    let started_pool = launch::start_pool(&args.pool, model_path)?;
    let (pool, task, children) = (started_pool.pool, started_pool.task, started_pool.children);
    let mut signals = signals::Signals::new()?;
    let started = Instant::now();
    let mut progress = Progress::new(todo.len() as u64);
    let mut queue = todo.into_iter();
    let mut set = JoinSet::new();
    let in_flight = children + 1;
    let (mut ok, mut failed, mut audio_s) = (0u64, 0u64, 0f64);
    let mut child_peak_kib = 0u64;
    let mut draining = false;
    let mut fatal = None;
    loop {
        while !draining && set.len() < in_flight {
            let Some((path, stamp)) = queue.next() else {
                break;
            };
            let pool = pool.clone();
            let tags = args.tags;
            set.spawn(async move {
                let r = pool.embed(path.display().to_string(), tags).await;
                (path, stamp, r)
            });
        }
        let joined = tokio::select! {
            j = set.join_next() => j,
            _ = signals.next() => {
                if draining {
                    eprintln!("ingest: second interrupt, stopping now");
                    std::process::exit(130);
                }
                draining = true;
                tracing::warn!("interrupted: finishing the {} job(s) in flight (interrupt again to stop now)", set.len());
                continue;
            }
            msg = pool.fatal(), if fatal.is_none() => {
                fatal = Some(msg);
                draining = true;
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (path, stamp, result) = joined.context("ingest task")?;
        let record = match result {
            Ok(o) => {
                ok += 1;
                audio_s += o.duration_s;
                child_peak_kib = child_peak_kib.max(o.peak_rss_kib);
                embed::to_record(&path, o, args.tags, stamp)
            }
            // Not run because we are stopping: leave it for the next run.
            Err(crate::pool::JobFailure::Cancelled(_)) => continue,
            Err(e) => {
                failed += 1;
                tracing::warn!(path = %path.display(), error = %e, "file failed");
                Record::Failed {
                    path: path.display().to_string(),
                    error: e.to_string(),
                    file: stamp,
                }
            }
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        out.write_all(&line)
            .and_then(|_| out.flush())
            .with_context(|| format!("writing {}", args.out.display()))?;
        progress.update(
            ok + failed,
            (ok + failed) + queue.len() as u64 + set.len() as u64,
            audio_s,
            started,
            pool.stats.alive.load(Ordering::Relaxed),
            pool.stats.restarts.load(Ordering::Relaxed),
        );
    }
    progress.finish();
    pool.shutdown().await;
    let _ = task.await;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "ingest: {ok} embedded, {failed} failed, {skipped} skipped, {} left; {audio_s:.0} s of audio in {wall:.1} s = {:.1}x realtime; {} child restart(s)",
        queue.len(),
        audio_s / wall.max(1e-9),
        pool.stats.restarts.load(Ordering::Relaxed)
    );
    println!(
        "ingest: supervisor peak RSS {:.1} MB, child peak RSS {:.1} MB, IPC overhead {:.2} ms/job (dispatch to result, minus the child's wall time)",
        chaarfm_child::isolation::peak_rss_kib() as f64 / 1024.0,
        child_peak_kib as f64 / 1024.0,
        pool.stats.overhead_ms()
    );
    if let Some(msg) = fatal {
        anyhow::bail!("{msg}");
    }
    Ok(())
}
