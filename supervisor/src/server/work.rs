//! One server job, start to finish: download, embed in the pool, shape the result like the
//! Python worker's. The hub stores it and hands it to the lane (`server::hub`).

use std::sync::Arc;

use chaarfm_shared::server::{DownloadJob, GenreJob, JobKind, Outcome, ServerJob, TrackData};
use serde_json::{json, Value};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::ctx::Ctx;
use super::download::{self, DownloadError, Downloaded};
use super::stopping;

/// Why a job was not done: the track's fault (reported failed) or this machine's
/// (handed back to the server, never reported failed).
#[derive(Debug, Clone, PartialEq)]
pub enum Fail {
    Track(String),
    Local(LocalFault),
}

/// A fault of this machine; see the rule in docs/ARCHITECTURE.md.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalFault {
    pub kind: LocalKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// The state dir cannot be written (full, read-only, removed): intake pauses until a
    /// probe succeeds.
    Disk,
    /// The pool stopped or is shutting down: the worker stops.
    Pool,
    /// YouTube refuses this machine (`server::youtube`): intake pauses with back-off.
    YouTube,
    /// The worker is stopping (`server::stopping`): the download was cancelled.
    Stopping,
    /// The download stalled twice (nothing written for `CHAARFM_DOWNLOAD_STALL_S`): the
    /// network's fault, not the track's.
    Network,
    /// The preferences paused intake just before the download (too little free disk:
    /// `min-free-disk-gb`); the job waits for the resume.
    Preference,
}

impl Fail {
    fn disk(message: String) -> Fail {
        Fail::Local(LocalFault {
            kind: LocalKind::Disk,
            message,
        })
    }
}

/// What a job ended with: an outcome to report, or a fault of this machine.
pub type End = Result<Outcome, LocalFault>;

/// Runs `job` to its end (the hub's [`super::hub::Runner`] in production).
pub async fn run(ctx: Arc<Ctx>, job: ServerJob) -> End {
    match execute(&ctx, &job).await {
        Ok(data) => Ok(Outcome::Success { data }),
        Err(Fail::Track(error)) => Ok(Outcome::Failed { error }),
        Err(Fail::Local(l)) => Err(l),
    }
}

async fn execute(ctx: &Ctx, job: &ServerJob) -> Result<Value, Fail> {
    match &job.kind {
        JobKind::Download(d) => download_and_embed(ctx, &job.job_id, d).await,
        JobKind::Genre(g) => {
            let mut stop = ctx.watch.draining.clone();
            tokio::select! {
                got = genre(ctx, g) => got.map_err(Fail::Track),
                () = stopping::requested(&mut stop) => Err(stopped()),
            }
        }
    }
}

/// Removes every file of one job from the download directory when the job is done,
/// whatever happened: the download, and yt-dlp's partial files if it failed midway.
/// Files are named `<stem>.<ext...>`, the stem unique per job.
struct JobFiles<'a> {
    dir: &'a std::path::Path,
    stem: &'a str,
}

impl Drop for JobFiles<'_> {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.dir) else {
            return;
        };
        let prefix = format!("{}.", self.stem);
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A download error: the machine's (disk) or the track's.
fn classify(e: DownloadError) -> Fail {
    if e.is_local() {
        Fail::disk(e.to_string())
    } else {
        Fail::Track(e.to_string())
    }
}

/// Downloads `target` with yt-dlp; when yt-dlp says it is outdated and lives in our own
/// venv, updates it (at most once a day) and tries once more.
async fn ytdlp(
    ctx: &Ctx,
    target: &str,
    search: bool,
    stem: &str,
) -> Result<Downloaded, DownloadError> {
    use super::youtube::{classify as verdict, Cause, Verdict};
    let Some(y) = ctx.ytdlp.as_ref() else {
        return Err(DownloadError::NoYtDlp);
    };
    let got = download::ytdlp_download(y, target, search, &ctx.tmp, stem, &ctx.limits).await;
    match &got {
        Err(DownloadError::YtDlp(msg))
            if verdict(msg) == Verdict::Machine(Cause::Outdated) && ctx.updater.update(y).await =>
        {
            download::ytdlp_download(y, target, search, &ctx.tmp, stem, &ctx.limits).await
        }
        _ => got,
    }
}

/// A yt-dlp download's end, blamed by `server::youtube`: the track's (failed), or this
/// machine's (handed back, intake paused); unknown texts count as the track's until the
/// breaker trips. `video` names the video (its URL, or the search).
fn blame_ytdlp(
    ctx: &Ctx,
    video: &str,
    got: Result<Downloaded, DownloadError>,
) -> Result<Downloaded, Fail> {
    use super::youtube::{classify as verdict, Cause, Verdict};
    let mut breaker = ctx.breaker.lock().unwrap_or_else(|p| p.into_inner());
    let e = match got {
        Ok(d) => {
            breaker.clear();
            return Ok(d);
        }
        Err(e) if e.is_local() => return Err(Fail::disk(e.to_string())),
        Err(e) => e,
    };
    let msg = e.to_string();
    let machine = |cause: Cause| {
        Fail::Local(LocalFault {
            kind: LocalKind::YouTube,
            message: format!("{msg} ({}: {})", cause.label(), cause.advice()),
        })
    };
    match verdict(&msg) {
        Verdict::Track => {
            breaker.clear();
            Err(Fail::Track(msg))
        }
        Verdict::Machine(cause) => {
            breaker.clear();
            Err(machine(cause))
        }
        Verdict::Unknown { trip_after } => {
            if breaker.unknown(video, &msg, trip_after) {
                Err(machine(Cause::Repeated))
            } else {
                Err(Fail::Track(msg))
            }
        }
    }
}

/// Where a job's audio comes from.
enum Source {
    /// A YouTube URL or search (`ytsearch1:...`): through yt-dlp.
    YouTube { target: String, search: bool },
    /// Any other http(s) URL: downloaded directly, through the guard.
    Direct(String),
}

impl Source {
    fn of(d: &DownloadJob) -> Result<Source, Fail> {
        match d.youtube_url.as_deref().filter(|u| !u.trim().is_empty()) {
            Some(url) => {
                let parsed = download::check_url(url).map_err(classify)?;
                Ok(if parsed.is_youtube() {
                    Source::YouTube {
                        target: url.to_string(),
                        search: false,
                    }
                } else {
                    // Never to yt-dlp, which resolves names itself: the direct
                    // downloader checks every resolved address and redirect hop
                    // (`server::guard`) and refuses pages and documents.
                    Source::Direct(url.to_string())
                })
            }
            None => {
                let (artist, title) = (
                    d.artist.as_deref().unwrap_or(""),
                    d.title.as_deref().unwrap_or(""),
                );
                if artist.trim().is_empty() && title.trim().is_empty() {
                    return Err(Fail::Track(
                        "job has neither youtube_url nor artist/title".into(),
                    ));
                }
                Ok(Source::YouTube {
                    target: format!("ytsearch1:\"{artist} {title} lyrics\""),
                    search: true,
                })
            }
        }
    }
}

/// A download in flight, listed in `Ctx::downloads` (the status line shows their ages).
struct InFlight<'a> {
    ctx: &'a Ctx,
    job_id: String,
}

impl<'a> InFlight<'a> {
    fn start(ctx: &'a Ctx, job_id: &str) -> Self {
        ctx.downloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id.to_string(), Instant::now());
        InFlight {
            ctx,
            job_id: job_id.to_string(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ctx
            .downloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.job_id);
    }
}

/// A stop's fault: the job goes back to the server.
fn stopped() -> Fail {
    Fail::Local(LocalFault {
        kind: LocalKind::Stopping,
        message: "worker stopping".into(),
    })
}

/// Downloads a job's audio: cancelled by a stop (handed back), a stall retried once
/// (then handed back), every other error blamed on the track or the machine.
async fn fetch_audio(ctx: &Ctx, source: &Source, stem: &str) -> Result<Downloaded, Fail> {
    let mut stop = ctx.watch.draining.clone();
    let mut stalls = 0;
    loop {
        let got = tokio::select! {
            got = attempt(ctx, source, stem) => got,
            () = stopping::requested(&mut stop) => Err(DownloadError::Cancelled),
        };
        let e = match got {
            Ok(d) => {
                if let Source::YouTube { target, .. } = source {
                    return blame_ytdlp(ctx, target, Ok(d));
                }
                return Ok(d);
            }
            Err(e) => e,
        };
        if stopping::ours(&mut stop, &e).await {
            return Err(stopped());
        }
        if let DownloadError::Stalled(_) = e {
            stalls += 1;
            if stalls < 2 {
                tracing::warn!(error = %e, "download stalled; trying once more");
                continue;
            }
            return Err(Fail::Local(LocalFault {
                kind: LocalKind::Network,
                message: format!("{e}, twice"),
            }));
        }
        return match source {
            Source::YouTube { target, .. } => blame_ytdlp(ctx, target, Err(e)),
            Source::Direct(_) => Err(classify(e)),
        };
    }
}

/// Sets the flag when dropped: a direct download's blocking thread stops at its next
/// chunk once its future is gone (stopped, stalled).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One download attempt, stall-watched.
async fn attempt(ctx: &Ctx, source: &Source, stem: &str) -> Result<Downloaded, DownloadError> {
    match source {
        Source::YouTube { target, search } => ytdlp(ctx, target, *search, stem).await,
        Source::Direct(url) => {
            let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
            let (u, dir, st, limits, c) = (
                url.clone(),
                ctx.tmp.clone(),
                stem.to_string(),
                ctx.limits.clone(),
                Arc::clone(&cancel.0),
            );
            let run = tokio::task::spawn_blocking(move || {
                download::http_download_until(&u, &dir, &st, &limits, &c)
            });
            let path = download::unless_stalled(&ctx.limits, &ctx.tmp, stem, async {
                run.await.map_err(|e| DownloadError::Network {
                    what: format!("download task failed: {e}"),
                    transient: false,
                })?
            })
            .await?;
            Ok(Downloaded {
                path,
                meta: None,
                source_url: url.clone(),
            })
        }
    }
}

/// Before a download: too little free disk for the preferences (`min-free-disk-gb`)
/// pauses intake (through the hub), and the job waits for the resume.
fn low_disk(ctx: &Ctx) -> Result<(), Fail> {
    match ctx.prefs.check_disk() {
        None => Ok(()),
        Some(p) => {
            // The preferences now say so; the hub pauses intake by them when it takes
            // this fault, before it keeps the job.
            let message = format!("paused before downloading: {}", p.reason);
            Err(Fail::Local(LocalFault {
                kind: LocalKind::Preference,
                message,
            }))
        }
    }
}

async fn download_and_embed(ctx: &Ctx, job_id: &str, d: &DownloadJob) -> Result<Value, Fail> {
    low_disk(ctx)?;
    let stem = super::names::job_stem(job_id);
    // Recreated if something removed it; failing that, the disk is the problem.
    crate::os::ensure_private_dir(&ctx.tmp).map_err(|e| {
        Fail::disk(format!(
            "cannot create the download directory {}: {e}",
            ctx.tmp.display()
        ))
    })?;
    let _cleanup = JobFiles {
        dir: &ctx.tmp,
        stem: &stem,
    };
    let source = Source::of(d)?;
    let fetching = Instant::now();
    let got = {
        let _flight = InFlight::start(ctx, job_id);
        fetch_audio(ctx, &source, &stem).await?
    };
    let embedding = Instant::now();
    let out = match ctx.pool.embed(got.path.clone(), false).await {
        Ok(out) => {
            ctx.pace.observe(embedding - fetching, embedding.elapsed());
            out
        }
        Err(e) if e.is_local() => {
            return Err(Fail::Local(LocalFault {
                kind: LocalKind::Pool,
                message: e.to_string(),
            }))
        }
        Err(e) => return Err(Fail::Track(format!("vectorization failed: {e}"))),
    };
    if out.vector.len() != 200 || out.vector.iter().any(|v| !v.is_finite()) {
        return Err(Fail::Track("vectorization failed: NaN in vector".into()));
    }
    let meta = got.meta.as_ref();
    let meta_str = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let youtube_id = meta_str("id").unwrap_or_else(|| {
        super::url::JobUrl::parse(&got.source_url)
            .map(|u| u.youtube_id())
            .unwrap_or_default()
    });
    // The job's, else the file's tags, else the download's metadata, else the defaults.
    let artist = d
        .artist
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| out.artist.clone())
        .or_else(|| meta_str("artist"))
        .or_else(|| meta_str("uploader"))
        .unwrap_or_else(|| "YouTube Artist".into());
    let title = d
        .title
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| out.title.clone())
        .or_else(|| meta_str("title"))
        .unwrap_or_else(|| format!("Test Track {youtube_id}"));
    serde_json::to_value(TrackData {
        artist,
        title,
        youtube_id,
        vector: out.vector,
        source_url: Some(got.source_url),
    })
    .map_err(|e| Fail::Track(e.to_string()))
}

/// Quality filter of a genre job (PROTOCOL.md defaults, overridden by `quality_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Quality {
    pub min_views: f64,
    pub min_likes: f64,
    pub min_like_ratio: f64,
    pub min_duration: f64,
    pub max_duration: f64,
}

impl Quality {
    pub fn from_config(cfg: Option<&Value>) -> Self {
        let get = |k: &str, d: f64| {
            cfg.and_then(|c| c.get(k))
                .and_then(Value::as_f64)
                .unwrap_or(d)
        };
        Quality {
            min_views: get("min_views", 1000.0),
            min_likes: get("min_likes", 10.0),
            min_like_ratio: get("min_like_ratio", 0.001),
            min_duration: get("min_duration", 60.0),
            max_duration: get("max_duration", 600.0),
        }
    }

    pub fn passes(&self, v: &Value) -> bool {
        let n = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let (views, likes, dur) = (n("view_count"), n("like_count"), n("duration"));
        views >= self.min_views
            && likes >= self.min_likes
            && (views <= 0.0 || likes / views >= self.min_like_ratio)
            && dur >= self.min_duration
            && dur <= self.max_duration
    }
}

/// Picks `limit` videos across view-count buckets: 20% from the top, 60% from the
/// middle, 20% from the bottom (PROTOCOL.md's diversity buckets).
pub fn diversify(mut videos: Vec<Value>, limit: usize) -> Vec<Value> {
    videos.sort_by(|a, b| {
        let v = |x: &Value| x.get("view_count").and_then(Value::as_f64).unwrap_or(0.0);
        v(b).total_cmp(&v(a))
    });
    if videos.len() <= limit {
        return videos;
    }
    let n = videos.len();
    let (top_end, mid_end) = (n / 5, n - n / 5);
    let want_top = (limit as f64 * 0.2).round() as usize;
    let want_bottom = (limit as f64 * 0.2).round() as usize;
    let want_mid = limit - want_top - want_bottom;
    let mut out: Vec<Value> = Vec::with_capacity(limit);
    out.extend(videos[..top_end].iter().take(want_top).cloned());
    out.extend(videos[top_end..mid_end].iter().take(want_mid).cloned());
    out.extend(videos[mid_end..].iter().take(want_bottom).cloned());
    // Fill from whatever is left when a bucket was short.
    for v in &videos {
        if out.len() >= limit {
            break;
        }
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

async fn genre(ctx: &Ctx, g: &GenreJob) -> Result<Value, String> {
    let ytdlp = ctx
        .ytdlp
        .as_ref()
        .ok_or_else(|| download::DownloadError::NoYtDlp.to_string())?;
    let limit = g.limit.unwrap_or(0) as usize;
    let search = if limit > 0 { (limit * 3).min(200) } else { 100 };
    let timeout = ctx.limits.ytdlp_timeout;
    let run = |args: Vec<String>| async move {
        let out = ytdlp
            .run(&args, timeout)
            .await
            .map_err(|e| format!("yt-dlp failed: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "yt-dlp failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    };
    let query = format!("ytsearch{search}:{} music playlist", g.genre);
    let flat = run(vec![
        "--flat-playlist".into(),
        "--dump-json".into(),
        "--no-warnings".into(),
        "--".into(),
        query,
    ])
    .await?;
    let urls: Vec<String> = flat
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            v.get("url")
                .or_else(|| v.get("webpage_url"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|u| download::check_url(u).is_ok_and(|u| u.is_youtube()))
        .collect();
    if urls.is_empty() {
        return Ok(json!({ "tracks": [], "genre": g.genre }));
    }
    let mut args: Vec<String> = vec![
        "--skip-download".into(),
        "--dump-json".into(),
        "--no-warnings".into(),
        "--ignore-errors".into(),
        "--".into(),
    ];
    args.extend(urls);
    let full = run(args).await.unwrap_or_default();
    let quality = Quality::from_config(g.quality_config.as_ref());
    let passing: Vec<Value> = full
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| quality.passes(v))
        .collect();
    let chosen = diversify(passing, if limit > 0 { limit } else { usize::MAX });
    let tracks: Vec<Value> = chosen
        .into_iter()
        .map(|v| {
            let s = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
            json!({
                "youtube_url": v.get("webpage_url").cloned().unwrap_or(Value::Null),
                "artist": v.get("artist").or_else(|| v.get("uploader")).cloned().unwrap_or(Value::Null),
                "title": s("title"),
                "view_count": s("view_count"),
                "like_count": s("like_count"),
                "duration": s("duration"),
            })
        })
        .collect();
    Ok(json!({ "tracks": tracks, "genre": g.genre }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(views: f64, likes: f64, dur: f64) -> Value {
        json!({"view_count": views, "like_count": likes, "duration": dur, "webpage_url": format!("https://youtu.be/{views}")})
    }

    #[test]
    fn quality_filter_uses_the_defaults_and_overrides() {
        let q = Quality::from_config(None);
        assert!(q.passes(&video(5000.0, 50.0, 200.0)));
        assert!(!q.passes(&video(500.0, 50.0, 200.0)), "too few views");
        assert!(!q.passes(&video(5000.0, 5.0, 200.0)), "too few likes");
        assert!(!q.passes(&video(1_000_000.0, 20.0, 200.0)), "like ratio");
        assert!(!q.passes(&video(5000.0, 50.0, 30.0)), "too short");
        assert!(!q.passes(&video(5000.0, 50.0, 900.0)), "too long");
        let loose = Quality::from_config(Some(
            &json!({"min_views": 0, "min_likes": 0, "min_like_ratio": 0}),
        ));
        assert!(loose.passes(&video(1.0, 0.0, 100.0)));
    }

    #[test]
    fn diversity_takes_from_every_view_bucket() {
        let videos: Vec<Value> = (1..=50)
            .map(|i| video(i as f64 * 1000.0, 100.0, 200.0))
            .collect();
        let picked = diversify(videos, 10);
        assert_eq!(picked.len(), 10);
        let views: Vec<f64> = picked
            .iter()
            .map(|v| v["view_count"].as_f64().unwrap())
            .collect();
        assert!(views.iter().any(|&v| v >= 41_000.0), "top bucket");
        assert!(views.iter().any(|&v| v <= 10_000.0), "bottom bucket");
        assert_eq!(
            views
                .iter()
                .filter(|&&v| v > 10_000.0 && v < 41_000.0)
                .count(),
            6,
            "middle bucket"
        );
    }
}
