//! `chaarfm-super ingest PATH... --out vectors.jsonl`: every audio file under PATHs to one
//! JSON line, appended and flushed as each finishes.
//!
//! Resumable: a file whose path, size and mtime are already in the output is skipped.
//! First Ctrl-C or SIGTERM: no new jobs, the ones in flight finish and are written, a
//! summary is printed, exit 0. A second one exits at once.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use chaarfm_shared::record::{done_files, FileStamp, JsonPath};

use crate::cli::IngestArgs;
use crate::exit::Exit;
use crate::{batch, embed, launch};

/// Audio files under `paths`, in a stable order, each file once however it was reached
/// (`d ./d /abs/d` name one folder). Symlinked folders are not followed (no loops);
/// explicitly named files are taken whatever their extension. A path or folder that
/// cannot be read is one error line; the rest goes on.
pub fn walk(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => walk_dir(p, &mut out),
            Ok(_) => out.push(p.clone()),
            Err(e) => {
                tracing::error!(path = %p.display(), error = %e, "cannot read this path; skipping it")
            }
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    out
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(path = %dir.display(), error = %e, "cannot list this folder; skipping it");
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            walk_dir(&path, out);
        } else if is_audio(&path)
            && std::fs::metadata(&path)
                .map(|m| m.is_file())
                .unwrap_or(false)
        {
            out.push(path);
        }
    }
}

/// Whether a file met while walking is audio, by the decoder's one list of extensions
/// (files named explicitly are always tried).
fn is_audio(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        chaarfm_child::decode::AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
    })
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

/// `--out` must be a regular file, or not exist yet: appending to a device, FIFO or
/// terminal (`/dev/full`, `/dev/stdout`) cannot be resumed from.
fn check_out(out: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(out) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => anyhow::bail!("--out {} is a directory: give a file path, e.g. {}/vectors.jsonl", out.display(), out.display()),
        Ok(_) => anyhow::bail!("--out {} is not a regular file (a device, FIFO or terminal): ingest appends to and resumes from a file, so give a file path", out.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot read --out {}", out.display())),
    }
}

type DoneSet = HashSet<(JsonPath, FileStamp)>;

/// Files already in the output, and whether its last line lacks a newline (a write cut
/// short by a crash): the next record must then start on a fresh line.
fn already_done(out: &Path) -> anyhow::Result<(DoneSet, bool)> {
    let f = match std::fs::File::open(out) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((HashSet::new(), false)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", out.display())),
    };
    let done = done_files(&mut std::io::BufReader::new(f))
        .with_context(|| format!("cannot read {}", out.display()))?;
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

/// Runs `ingest`. Returns normally after a drain too (exit 0); a pool stop is an error
/// (exit 2) that leaves the files not done for the rerun.
pub async fn run(args: &IngestArgs, model_path: Option<&Path>) -> anyhow::Result<Exit> {
    check_out(&args.out)?;
    let files = walk(&args.paths);
    let (done_before, needs_newline) = already_done(&args.out)?;
    let mut todo: Vec<(PathBuf, Option<FileStamp>)> = files
        .iter()
        .map(|p| (p.clone(), stamp(p)))
        .filter(|(p, s)| s.is_none_or(|s| !done_before.contains(&(JsonPath::from_path(p), s))))
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
    let out = Appender::start(out);
    if todo.is_empty() {
        out.finish()
            .await
            .with_context(|| format!("writing {}", args.out.display()))?;
        crate::logging::print(&format!(
            "ingest: nothing to do ({skipped} file(s) already in {})\n",
            args.out.display()
        ));
        return Ok(Exit::Ok);
    }

    let state_dir = crate::os::default_state_dir();
    let started_pool = launch::start_pool(&args.pool, model_path, &state_dir)?;
    let (pool, task, children) = (started_pool.pool, started_pool.task, started_pool.children);
    let started = Instant::now();
    let total = todo.len() as u64;
    let mut progress = Progress::new(total);
    let (mut ok, mut failed, mut audio_s) = (0u64, 0u64, 0f64);
    let mut child_peak_kib = 0u64;
    let mut busy = Busy::default();
    let files: Vec<(usize, PathBuf)> = todo.iter().map(|(p, _)| p.clone()).enumerate().collect();
    let collected = batch::collect(&pool, files, args.tags, children + 1, |i, result| {
        let (path, stamp) = (&todo[i].0, &todo[i].1);
        let record = match result {
            Ok(o) => {
                ok += 1;
                audio_s += o.duration_s;
                child_peak_kib = child_peak_kib.max(o.peak_rss_kib);
                busy.add(&o);
                embed::to_record(path, o, args.tags, *stamp)
            }
            Err(e) => {
                failed += 1;
                tracing::warn!(path = %path.display(), error = %e, "file failed");
                embed::failed(path, e.to_string(), *stamp)
            }
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        anyhow::ensure!(out.append(line), "cannot write {}", args.out.display());
        progress.update(
            ok + failed,
            total,
            audio_s,
            started,
            pool.stats.alive.load(Ordering::Relaxed),
            pool.stats.restarts.load(Ordering::Relaxed),
        );
        Ok(())
    })
    .await;
    progress.finish();
    pool.shutdown().await;
    let _ = task.await;
    out.finish()
        .await
        .with_context(|| format!("writing {}", args.out.display()))?;
    let collected = collected?;
    let wall = started.elapsed().as_secs_f64();
    crate::logging::print(&format!(
        "ingest: {ok} embedded, {failed} failed, {skipped} skipped, {} left; {audio_s:.0} s of audio in {wall:.1} s = {:.1}x realtime; {} child restart(s)\n\
         ingest: supervisor peak RSS {:.1} MB, child peak RSS {:.1} MB, IPC overhead {:.2} ms/job (dispatch to result, minus the child's wall time)\n",
        collected.left,
        audio_s / wall.max(1e-9),
        pool.stats.restarts.load(Ordering::Relaxed),
        chaarfm_child::isolation::peak_rss_kib() as f64 / 1024.0,
        child_peak_kib as f64 / 1024.0,
        pool.stats.overhead_ms()
    ));
    let ipc_ms = pool.stats.overhead_us.load(Ordering::Relaxed) as f64 / 1e3;
    crate::logging::print(&busy.line(children, wall, ipc_ms));
    if let Some(stop) = collected.stopped {
        anyhow::bail!("{stop} ({} file(s) left for the next run)", collected.left);
    }
    Ok(Exit::Ok)
}

/// What the children spent on the jobs they finished, from their own timings: tells a
/// pool kept busy (children's time near children x wall) from one waiting on its input,
/// and is the roofline bench's per-stage split measured in the same run as its speed.
#[derive(Debug, Default)]
struct Busy {
    timings: chaarfm_shared::ipc::Timings,
    /// Receiving each job to replying, summed (ms).
    wall_ms: f64,
}

impl Busy {
    fn add(&mut self, o: &chaarfm_shared::ipc::JobOutput) {
        self.timings.decode_ms += o.timings.decode_ms;
        self.timings.resample_ms += o.timings.resample_ms;
        self.timings.features_ms += o.timings.features_ms;
        self.timings.infer_ms += o.timings.infer_ms;
        self.wall_ms += o.wall_ms;
    }

    /// The summary line: the children's time, its share of `children` x `wall` (s), its
    /// stages, and what IPC cost in all (`ipc_ms`, the pool's measure).
    fn line(&self, children: usize, wall: f64, ipc_ms: f64) -> String {
        let t = &self.timings;
        let staged = t.decode_ms + t.resample_ms + t.features_ms + t.infer_ms;
        let s = |ms: f64| ms / 1e3;
        format!(
            "ingest: children busy {:.2} s of {children} x {wall:.2} s ({:.1}%): decode {:.2} s, resample {:.2} s, mel {:.2} s, inference {:.2} s, other {:.2} s; IPC {:.2} s\n",
            s(self.wall_ms),
            s(self.wall_ms) * 100.0 / (children.max(1) as f64 * wall).max(1e-9),
            s(t.decode_ms),
            s(t.resample_ms),
            s(t.features_ms),
            s(t.infer_ms),
            s((self.wall_ms - staged).max(0.0)),
            s(ipc_ms),
        )
    }
}

/// Appends result lines on a blocking thread: a slow or stuck disk never stalls the
/// event loop (and with it the pool's heartbeats). Lines are flushed one by one, so a
/// crash loses at most the lines in flight, which the next run redoes.
struct Appender {
    lines: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Appender {
    fn start(mut file: std::fs::File) -> Self {
        let (lines, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let task = tokio::task::spawn_blocking(move || {
            while let Some(line) = rx.blocking_recv() {
                file.write_all(&line)?;
                file.flush()?;
            }
            Ok(())
        });
        Appender { lines, task }
    }

    /// Queues one line; false once writing has failed ([`Appender::finish`] says why).
    fn append(&self, line: Vec<u8>) -> bool {
        self.lines.send(line).is_ok()
    }

    /// Writes what is queued; the first write error, if any.
    async fn finish(self) -> std::io::Result<()> {
        drop(self.lines);
        self.task.await.map_err(std::io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_line_sums_the_childrens_own_timings_against_children_times_wall() {
        let job = |decode_ms, infer_ms, wall_ms| chaarfm_shared::ipc::JobOutput {
            vector: vec![],
            tags: vec![],
            patches: 1,
            duration_s: 10.0,
            timings: chaarfm_shared::ipc::Timings {
                decode_ms,
                resample_ms: 100.0,
                features_ms: 50.0,
                infer_ms,
            },
            peak_rss_kib: 1,
            wall_ms,
            artist: None,
            title: None,
        };
        let mut busy = Busy::default();
        busy.add(&job(200.0, 1_000.0, 1_400.0));
        busy.add(&job(300.0, 2_000.0, 2_600.0));
        // 4 s busy of 2 children x 2.5 s; 0.2 s of the children's time is unstaged; IPC
        // 1 ms in all.
        assert_eq!(
            busy.line(2, 2.5, 1.0),
            "ingest: children busy 4.00 s of 2 x 2.50 s (80.0%): decode 0.50 s, resample 0.20 s, mel 0.10 s, inference 3.00 s, other 0.20 s; IPC 0.00 s\n"
        );
    }

    #[test]
    fn folders_yield_every_format_the_decoder_knows() {
        for name in [
            "a.mp3", "b.WMA", "c.wv", "d.aiff", "e.caf", "f.ape", "g.m4a", "h.ac3",
        ] {
            assert!(is_audio(Path::new(name)), "{name}");
        }
        for name in ["notes.txt", "cover.jpg", "noext"] {
            assert!(!is_audio(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn one_folder_named_three_ways_is_walked_once_and_bad_paths_are_skipped() {
        let dir = std::env::temp_dir().join(format!("chaarfm-walk-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/a.wav"), b"x").unwrap();
        let paths = vec![
            dir.join("d"),
            dir.join("d/../d"),
            dir.join("./d"),
            dir.join("missing"),
        ];
        assert_eq!(walk(&paths), vec![dir.join("d/a.wav")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn out_must_be_a_regular_file() {
        assert!(check_out(Path::new("/dev/null")).is_err());
        assert!(check_out(Path::new("/")).is_err());
        assert!(check_out(Path::new("/nonexistent-dir-chaarfm/x.jsonl")).is_ok());
    }
}
