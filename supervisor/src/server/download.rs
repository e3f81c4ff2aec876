//! Getting a job's audio onto disk, in the supervisor (never in the children):
//! - YouTube URLs ([`is_youtube`]) and searches go through yt-dlp as a subprocess: an
//!   argument vector, never a shell, `--` before the URL, M4A/AAC preferred (symphonia
//!   decodes it as is; no post-processing). yt-dlp resolves names itself, so it gets
//!   nothing else: any other URL could make it request a machine on this network;
//! - every other http(s) URL is streamed to disk directly ([`http_download`]), every
//!   name and redirect hop resolved through the private-address guard, in bounded time
//!   (a floor rate over a window, a ceiling for the whole download, a timeout per
//!   read), size-bounded while streaming, web pages and documents refused by their
//!   Content-Type, transient network errors retried twice.
//!
//! Only http and https are accepted. Files live in a private directory and are removed
//! by the caller after the job.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaarfm_child::layout;

use super::url::JobUrl;
use serde_json::Value;

/// Size bounds and timeouts (`POST_DOWNLOAD_MIN_SIZE_MB`, `POST_DOWNLOAD_MAX_SIZE_MB`, as
/// the Python worker reads them).
#[derive(Debug, Clone)]
pub struct Limits {
    pub min_bytes: u64,
    pub max_bytes: u64,
    pub connect_timeout: Duration,
    /// No byte for this long fails the download.
    pub read_timeout: Duration,
    /// yt-dlp gets this long in all.
    pub ytdlp_timeout: Duration,
    /// A download whose files on disk have not grown for this long is stalled
    /// ([`stalled`]): cancelled, and treated as a network fault.
    pub stall: Duration,
    /// A direct download averaging less than `min_rate` bytes/s over a `rate_window`
    /// fails as too slow...
    pub min_rate: u64,
    pub rate_window: Duration,
    /// ...and one that takes longer than this in all fails too.
    pub max_time: Duration,
    /// Waits before the retries of a transient network error (one retry each).
    pub retry_delays: Vec<Duration>,
    /// `--allow-private-urls`: the private-address guard is off (`server::guard`).
    pub allow_private: bool,
}

impl Limits {
    /// Defaults (0.5 MB, 50 MB, 15 s connect, 30 s per read, 16 KB/s over 60 s, 15 min
    /// in all, 10 min yt-dlp, stalled after 120 s without a byte written), overridden
    /// by `POST_DOWNLOAD_MIN_SIZE_MB`, `POST_DOWNLOAD_MAX_SIZE_MB`,
    /// `CHAARFM_READ_TIMEOUT_S`, `CHAARFM_DOWNLOAD_MIN_KBPS`, `CHAARFM_DOWNLOAD_WINDOW_S`,
    /// `CHAARFM_DOWNLOAD_MAX_S` and `CHAARFM_DOWNLOAD_STALL_S`.
    pub fn from_env() -> Self {
        let num = |name: &str, default: f64| -> f64 {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .unwrap_or(default)
                .max(0.0)
        };
        let mb = |name: &str, default: f64| (num(name, default) * 1024.0 * 1024.0) as u64;
        let secs = |name: &str, default: f64| Duration::from_secs_f64(num(name, default).max(0.1));
        Limits {
            min_bytes: mb("POST_DOWNLOAD_MIN_SIZE_MB", 0.5),
            max_bytes: mb("POST_DOWNLOAD_MAX_SIZE_MB", 50.0),
            connect_timeout: Duration::from_secs(15),
            read_timeout: secs("CHAARFM_READ_TIMEOUT_S", 30.0),
            ytdlp_timeout: Duration::from_secs(600),
            stall: secs("CHAARFM_DOWNLOAD_STALL_S", 120.0),
            min_rate: (num("CHAARFM_DOWNLOAD_MIN_KBPS", 16.0) * 1024.0) as u64,
            rate_window: secs("CHAARFM_DOWNLOAD_WINDOW_S", 60.0),
            max_time: secs("CHAARFM_DOWNLOAD_MAX_S", 900.0),
            retry_delays: vec![Duration::from_secs(1), Duration::from_secs(3)],
            allow_private: false,
        }
    }
}

/// The floor rate of a direct download: each window of [`Limits::rate_window`] must
/// bring at least `min_rate` x its length in bytes (a source that trickles a byte a
/// second never trips a per-read timeout, and would hold a slot forever).
#[derive(Debug, Clone)]
pub struct RateFloor {
    min_rate: u64,
    window: Duration,
    start: Instant,
    at_start: u64,
}

impl RateFloor {
    pub fn new(limits: &Limits, now: Instant) -> Self {
        RateFloor {
            min_rate: limits.min_rate,
            window: limits.rate_window,
            start: now,
            at_start: 0,
        }
    }

    /// `total` bytes have arrived by `now`: an error once a whole window brought less
    /// than the floor.
    pub fn check(&mut self, now: Instant, total: u64) -> Result<(), DownloadError> {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < self.window {
            return Ok(());
        }
        let got = total.saturating_sub(self.at_start);
        if (got as f64) < self.min_rate as f64 * elapsed.as_secs_f64() {
            return Err(DownloadError::TooSlow {
                got_kb: got as f64 / 1024.0,
                secs: elapsed.as_secs_f64(),
                min_kbps: self.min_rate as f64 / 1024.0,
            });
        }
        self.start = now;
        self.at_start = total;
        Ok(())
    }
}

/// Why a download failed; each message is what the server's failed result says.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("unsupported URL {0:?}: only http:// and https:// URLs are accepted")]
    Scheme(String),
    #[error("download failed: HTTP {0}")]
    Status(u16),
    /// A network error; `transient` ones (reset, refused, cut, timed out) are retried.
    #[error("download failed: {what}")]
    Network { what: String, transient: bool },
    #[error("download too slow: {got_kb:.1} KB in {secs:.0} s, less than {min_kbps:.0} KB/s (CHAARFM_DOWNLOAD_MIN_KBPS)")]
    TooSlow {
        got_kb: f64,
        secs: f64,
        min_kbps: f64,
    },
    #[error("download too slow: not done after {0} s (CHAARFM_DOWNLOAD_MAX_S)")]
    TookTooLong(u64),
    #[error("not audio: the server sent {0}, a web page or document rather than a sound file")]
    NotAudio(String),
    #[error("download too large: the server announces {announced_mb:.1} MB, more than POST_DOWNLOAD_MAX_SIZE_MB ({max_mb:.1} MB)")]
    Announced { announced_mb: f64, max_mb: f64 },
    #[error("download too large: more than POST_DOWNLOAD_MAX_SIZE_MB ({max_mb:.1} MB)")]
    TooLarge { max_mb: f64 },
    #[error(
        "download too small: {got_mb:.2} MB, less than POST_DOWNLOAD_MIN_SIZE_MB ({min_mb:.2} MB)"
    )]
    TooSmall { got_mb: f64, min_mb: f64 },
    #[error("yt-dlp is not installed (run scripts/setup.sh, or set CHAARFM_YTDLP to its path)")]
    NoYtDlp,
    #[error("yt-dlp failed: {0}")]
    YtDlp(String),
    /// yt-dlp ended by a signal, with nothing on stderr to say why (Unix only: Windows
    /// has no signals).
    #[cfg_attr(not(unix), allow(dead_code))]
    #[error("yt-dlp failed: killed by signal {0}")]
    Killed(i32),
    #[error("download stalled: nothing written for {0} s (CHAARFM_DOWNLOAD_STALL_S)")]
    Stalled(u64),
    /// The supervisor cancelled it (stopping, or a stall).
    #[error("download cancelled")]
    Cancelled,
    #[error(transparent)]
    Refused(#[from] super::guard::Refused),
    #[error("cannot write the download: {0}")]
    Io(#[from] std::io::Error),
}

impl DownloadError {
    /// A fault of this machine (its disk), not of the track or its source: the job is
    /// handed back rather than reported failed.
    pub fn is_local(&self) -> bool {
        match self {
            DownloadError::Io(_) => true,
            DownloadError::YtDlp(msg) => {
                let m = msg.to_ascii_lowercase();
                [
                    "no space left on device",
                    "errno 28",
                    "read-only file system",
                    "disk quota exceeded",
                    "unable to open for writing",
                ]
                .iter()
                .any(|s| m.contains(s))
            }
            _ => false,
        }
    }

    /// The helper was interrupted rather than failing on its own: killed by a signal, or
    /// yt-dlp's own words for SIGINT. Whether that was our stop is
    /// `server::stopping`'s to decide.
    pub fn interrupted(&self) -> bool {
        match self {
            DownloadError::Killed(_) | DownloadError::Cancelled => true,
            DownloadError::YtDlp(msg) => msg.contains("Interrupted by user"),
            _ => false,
        }
    }

    /// Worth trying again: a network error that says nothing about the source, or a
    /// server error (5xx). A 4xx, a refusal or a wrong size is final.
    pub fn is_transient(&self) -> bool {
        match self {
            DownloadError::Network { transient, .. } => *transient,
            DownloadError::Status(s) => *s >= 500,
            _ => false,
        }
    }

    /// A ureq error, classified.
    fn from_ureq(e: ureq::Error) -> DownloadError {
        let transient = match &e {
            ureq::Error::Io(io) => return Self::from_io(io),
            ureq::Error::Other(_) => {
                return match e {
                    ureq::Error::Other(inner) => match inner.downcast::<super::guard::Refused>() {
                        Ok(refused) => DownloadError::Refused(*refused),
                        Err(other) => DownloadError::Network {
                            what: other.to_string(),
                            transient: false,
                        },
                    },
                    _ => unreachable!("matched as Other above"),
                };
            }
            ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed | ureq::Error::BodyStalled => {
                true
            }
            _ => false,
        };
        DownloadError::Network {
            what: e.to_string(),
            transient,
        }
    }

    /// An I/O error while connecting or reading the body (ureq wraps its own errors).
    fn from_io(e: &std::io::Error) -> DownloadError {
        use std::io::ErrorKind as K;
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
            if let ureq::Error::Timeout(_) = inner {
                return DownloadError::Network {
                    what: format!("the server stopped sending ({inner})"),
                    transient: true,
                };
            }
        }
        let transient = matches!(
            e.kind(),
            K::UnexpectedEof
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::ConnectionRefused
                | K::TimedOut
                | K::BrokenPipe
                | K::Interrupted
        );
        DownloadError::Network {
            what: e.to_string(),
            transient,
        }
    }
}

/// What a download produced.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub path: PathBuf,
    /// yt-dlp's metadata (`artist`, `uploader`, `title`, `id`...), when it was used.
    pub meta: Option<Value>,
    pub source_url: String,
}

/// Checks that `url` is http(s) and cannot be mistaken for an option.
pub fn check_url(url: &str) -> Result<JobUrl, DownloadError> {
    JobUrl::parse(url).map_err(|e| DownloadError::Scheme(e.0))
}

/// The extension a direct download is saved with: the URL's own when it is an audio
/// extension, else one for the Content-Type, else `audio` (the decoder probes the bytes).
fn download_ext(url: &JobUrl, content_type: &str) -> String {
    if let Some(ext) = url.extension() {
        if chaarfm_child::decode::AUDIO_EXTENSIONS.contains(&ext.as_str()) {
            return ext;
        }
    }
    match content_type {
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/mp4" | "audio/x-m4a" | "audio/m4a" => "m4a",
        "audio/aac" | "audio/aacp" => "aac",
        "audio/ogg" | "application/ogg" | "audio/vorbis" => "ogg",
        "audio/opus" => "opus",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "wav",
        "audio/webm" | "video/webm" => "webm",
        "audio/x-matroska" => "mka",
        _ => "audio",
    }
    .to_string()
}

/// A Content-Type that is a page or a document, never a sound file.
fn is_not_audio(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type.ends_with("+xml")
        || content_type.ends_with("+json")
        || matches!(
            content_type,
            "application/json" | "application/xml" | "application/xhtml" | "application/javascript"
        )
}

/// Downloads `url` into `dir` as `<stem>.<ext>` (the extension from the URL or the
/// Content-Type), bounded in size and time, retrying transient network errors (blocking:
/// run it on a blocking thread). Returns the file written.
#[cfg(test)]
pub fn http_download(
    url: &str,
    dir: &Path,
    stem: &str,
    limits: &Limits,
) -> Result<PathBuf, DownloadError> {
    http_download_until(url, dir, stem, limits, &AtomicBool::new(false))
}

/// [`http_download`] until `cancel` is set: then it stops at the next chunk (or retry
/// wait), removes what it wrote and returns [`DownloadError::Cancelled`].
pub fn http_download_until(
    url: &str,
    dir: &Path,
    stem: &str,
    limits: &Limits,
    cancel: &AtomicBool,
) -> Result<PathBuf, DownloadError> {
    let guard = (!limits.allow_private).then(super::guard::GuardResolver::default);
    fetch(url, dir, stem, limits, guard.as_ref(), cancel)
}

/// [`http_download_until`] with the guard given (`None`: off).
fn fetch(
    url: &str,
    dir: &Path,
    stem: &str,
    limits: &Limits,
    guard: Option<&super::guard::GuardResolver>,
    cancel: &AtomicBool,
) -> Result<PathBuf, DownloadError> {
    let mut delays = limits.retry_delays.iter();
    loop {
        match fetch_once(url, dir, stem, limits, guard, cancel) {
            Err(e) if e.is_transient() && !cancel.load(Ordering::Relaxed) => match delays.next() {
                Some(d) => {
                    tracing::info!(%url, error = %e, "download interrupted; trying again in {} s", d.as_secs_f64());
                    std::thread::sleep(*d);
                }
                None => return Err(e),
            },
            _ if cancel.load(Ordering::Relaxed) => return Err(DownloadError::Cancelled),
            other => return other,
        }
    }
}

/// One attempt of [`fetch`].
fn fetch_once(
    url: &str,
    dir: &Path,
    stem: &str,
    limits: &Limits,
    guard: Option<&super::guard::GuardResolver>,
    cancel: &AtomicBool,
) -> Result<PathBuf, DownloadError> {
    let job_url = check_url(url)?;
    if let Some(g) = guard {
        // Through a proxy (HTTP(S)_PROXY), names are resolved by the proxy: literal
        // addresses, at least, are checked here.
        g.check_literal(url)?;
    }
    let started = Instant::now();
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(limits.connect_timeout))
        .timeout_per_read(Some(limits.read_timeout))
        .timeout_recv_response(Some(limits.read_timeout))
        .http_status_as_error(false)
        .max_redirects(5)
        .user_agent(concat!("chaarfm-super/", env!("CARGO_PKG_VERSION")))
        .build();
    let agent: ureq::Agent = match guard {
        None => config.into(),
        // Every hop (redirects included) resolves through the guard, and ureq connects
        // to the addresses it checked.
        Some(guard) => ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            guard.clone(),
        ),
    };
    let resp = agent.get(url).call().map_err(DownloadError::from_ureq)?;
    let status = resp.status().as_u16();
    if status >= 400 {
        return Err(DownloadError::Status(status));
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    let content_type = header("content-type")
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if is_not_audio(&content_type) {
        return Err(DownloadError::NotAudio(content_type));
    }
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    if let Some(len) = header("content-length").and_then(|v| v.parse::<u64>().ok()) {
        if len > limits.max_bytes {
            return Err(DownloadError::Announced {
                announced_mb: mb(len),
                max_mb: mb(limits.max_bytes),
            });
        }
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(DownloadError::Cancelled);
    }
    let dest = dir.join(format!("{stem}.{}", download_ext(&job_url, &content_type)));
    // Whatever ends this attempt early, nothing of it stays (the caller may already have
    // cleaned the directory when it cancelled).
    let written = Written(Some(&dest));
    let mut reader = resp
        .into_body()
        .into_with_config()
        .limit(limits.max_bytes.saturating_add(1))
        .reader();
    let mut file = std::io::BufWriter::new(std::fs::File::create(&dest)?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut floor = RateFloor::new(limits, started);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let inner = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>());
                if let Some(ureq::Error::BodyExceedsLimit(_)) = inner {
                    return Err(DownloadError::TooLarge {
                        max_mb: mb(limits.max_bytes),
                    });
                }
                return Err(DownloadError::from_io(&e));
            }
        };
        if cancel.load(Ordering::Relaxed) {
            return Err(DownloadError::Cancelled);
        }
        total += n as u64;
        if total > limits.max_bytes {
            return Err(DownloadError::TooLarge {
                max_mb: mb(limits.max_bytes),
            });
        }
        file.write_all(&buf[..n])?;
        let now = Instant::now();
        floor.check(now, total)?;
        if now.duration_since(started) > limits.max_time {
            return Err(DownloadError::TookTooLong(limits.max_time.as_secs()));
        }
    }
    file.flush()?;
    if total < limits.min_bytes {
        return Err(DownloadError::TooSmall {
            got_mb: mb(total),
            min_mb: mb(limits.min_bytes),
        });
    }
    written.keep();
    Ok(dest)
}

/// A file being written: removed on drop unless kept.
struct Written<'a>(Option<&'a Path>);

impl Written<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Bytes on disk of one job's files (`<stem>.*`: yt-dlp's `.part` and fragments, or the
/// direct download).
pub fn job_bytes(dir: &Path, stem: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let prefix = format!("{stem}.");
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// `download`, unless job `stem`'s files in `dir` stop growing for [`Limits::stall`]
/// first: then it is dropped (which cancels it) and the error is [`DownloadError::Stalled`].
pub async fn unless_stalled<T>(
    limits: &Limits,
    dir: &Path,
    stem: &str,
    download: impl std::future::Future<Output = Result<T, DownloadError>>,
) -> Result<T, DownloadError> {
    tokio::select! {
        got = download => got,
        () = stalled(limits.stall, || job_bytes(dir, stem)) => {
            Err(DownloadError::Stalled(limits.stall.as_secs()))
        }
    }
}

/// Resolves once `bytes()` has not grown for `window` (checked every quarter window,
/// at most every 5 s): a download gone silent, which no timeout of its own would end
/// before [`Limits::ytdlp_timeout`].
pub async fn stalled(window: Duration, mut bytes: impl FnMut() -> u64) {
    let every = (window / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut last = bytes();
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let now = bytes();
        if now > last {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= window {
            return;
        }
    }
}

/// yt-dlp, and the JavaScript runtime it needs for YouTube (since late 2025) when that
/// is not on `PATH` (yt-dlp finds a `PATH` one itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YtDlp {
    pub path: PathBuf,
    /// deno beside yt-dlp (the bundle's or setup's private venv), passed explicitly.
    pub deno: Option<PathBuf>,
    /// Found on `PATH`: someone else's, never updated by us.
    pub on_path: bool,
    /// `--cookies FILE`: passed to every call (never logged).
    pub cookies: Option<PathBuf>,
}

impl YtDlp {
    /// Finds yt-dlp: `CHAARFM_YTDLP`, then the bundle's private venv beside the executable
    /// (`tools/bin`, made by its install.sh), then `PATH`. A checkout's cargo sets
    /// `CHAARFM_YTDLP` to setup's `.deps/venv` (`.cargo/config.toml`).
    pub fn find() -> Option<YtDlp> {
        let name = layout::exe_name("yt-dlp");
        let ours = std::env::var_os("CHAARFM_YTDLP")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let p = layout::tools_bin(&layout::exe_dir()?).join(&name);
                p.is_file().then_some(p)
            });
        let on_path = ours.is_none();
        let path = ours.or_else(|| layout::on_path("yt-dlp"))?;
        Some(YtDlp {
            on_path,
            ..Self::with_runtime_beside(path)
        })
    }

    /// The Python of the private venv yt-dlp lives in (the bundle's `tools/`, set-up's
    /// `.deps/venv`), which may update it; `None` for a yt-dlp found on `PATH` or one
    /// outside a venv.
    pub fn private_python(&self) -> Option<PathBuf> {
        if self.on_path {
            return None;
        }
        let bin = self.path.parent()?;
        let venv = bin.parent()?;
        if !venv.join("pyvenv.cfg").is_file() {
            return None;
        }
        ["python3", "python"]
            .iter()
            .map(|n| bin.join(layout::exe_name(n)))
            .find(|p| p.is_file())
    }

    /// yt-dlp at `path`, with the deno beside it when deno is not on `PATH`.
    pub fn with_runtime_beside(path: PathBuf) -> YtDlp {
        Self::with_runtime(path, layout::on_path("deno"))
    }

    /// As [`Self::with_runtime_beside`], given what `PATH` holds.
    fn with_runtime(path: PathBuf, deno_on_path: Option<PathBuf>) -> YtDlp {
        let beside = path
            .parent()
            .map(|d| d.join(layout::exe_name("deno")))
            .filter(|d| d.is_file());
        let deno = match beside {
            Some(d) if deno_on_path.as_deref() != Some(d.as_path()) => Some(d),
            _ => None,
        };
        YtDlp {
            path,
            deno,
            on_path: false,
            cookies: None,
        }
    }

    /// The command to run, with the JavaScript runtime named when needed.
    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.args(self.runtime_args());
        if let Some(c) = &self.cookies {
            cmd.arg("--cookies").arg(c);
        }
        cmd
    }

    /// The one way yt-dlp is run: `args` after the runtime and cookies, as a helper
    /// (`os::helper`: its own process group, killed with this future), within `limit`.
    pub async fn run<I, S>(
        &self,
        args: I,
        limit: Duration,
    ) -> Result<std::process::Output, RunError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        Self::output(cmd, limit).await
    }

    async fn output(
        cmd: tokio::process::Command,
        limit: Duration,
    ) -> Result<std::process::Output, RunError> {
        tokio::time::timeout(limit, crate::os::helper::output(cmd))
            .await
            .map_err(|_| RunError::TimedOut(limit.as_secs()))?
            .map_err(RunError::Spawn)
    }

    /// `yt-dlp --version`, bounded in time (no runtime, no cookies: it needs neither).
    pub async fn version(&self) -> Result<String, RunError> {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.arg("--version");
        let out = Self::output(cmd, Duration::from_secs(30)).await?;
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !v.is_empty() {
            Ok(v)
        } else {
            Err(RunError::Status(out.status.to_string()))
        }
    }

    /// `--js-runtimes deno:PATH` when deno is beside yt-dlp but not on `PATH`.
    pub fn runtime_args(&self) -> Vec<std::ffi::OsString> {
        match &self.deno {
            Some(d) => {
                let mut v = std::ffi::OsString::from("deno:");
                v.push(d.as_os_str());
                vec!["--js-runtimes".into(), v]
            }
            None => Vec::new(),
        }
    }
}

/// Why a yt-dlp run produced no output.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no answer in {0} s")]
    TimedOut(u64),
    #[error("{0}")]
    Spawn(std::io::Error),
    #[error("exit status {0}")]
    Status(String),
}

impl From<RunError> for DownloadError {
    fn from(e: RunError) -> DownloadError {
        match e {
            RunError::TimedOut(s) => DownloadError::YtDlp(format!("timed out after {s} s")),
            RunError::Spawn(e) => DownloadError::Io(e),
            RunError::Status(s) => DownloadError::YtDlp(s),
        }
    }
}

/// What a failed yt-dlp run says: its last stderr line, or the signal that ended it.
fn ytdlp_failure(out: &std::process::Output) -> DownloadError {
    let err = String::from_utf8_lossy(&out.stderr);
    if let Some(last) = err.lines().rev().find(|l| !l.trim().is_empty()) {
        return DownloadError::YtDlp(last.trim().to_string());
    }
    // Platform code here by nature: only Unix exit statuses carry a signal.
    #[cfg(unix)]
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&out.status) {
        return DownloadError::Killed(sig);
    }
    DownloadError::YtDlp("no output".into())
}

/// Runs yt-dlp for `target` (a URL, or `ytsearch1:...`) into `dir` with name stem `stem`;
/// returns the file and yt-dlp's metadata.
pub async fn ytdlp_download(
    ytdlp: &YtDlp,
    target: &str,
    search: bool,
    dir: &Path,
    stem: &str,
    limits: &Limits,
) -> Result<Downloaded, DownloadError> {
    let mut args: Vec<std::ffi::OsString> = [
        "--no-playlist",
        "--no-progress",
        "--no-warnings",
        "--quiet",
        "--no-simulate",
        "--dump-json",
        "-f",
        "bestaudio[ext=m4a]/bestaudio[acodec^=mp4a]/bestaudio",
        "--max-filesize",
    ]
    .map(Into::into)
    .into();
    args.push(limits.max_bytes.to_string().into());
    args.push("-o".into());
    args.push(dir.join(format!("{stem}.%(ext)s")).into());
    if search {
        args.extend(["--match-filter", "duration >= 60 & duration <= 600"].map(Into::into));
    }
    args.extend(["--".into(), target.into()]);
    // A drop of this future (stop, stall, timeout) kills yt-dlp and what it started.
    let out = unless_stalled(limits, dir, stem, async {
        Ok(ytdlp.run(args, limits.ytdlp_timeout).await?)
    })
    .await?;
    if !out.status.success() {
        return Err(ytdlp_failure(&out));
    }
    let meta: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| DownloadError::YtDlp("nothing found".into()))?;
    let path = meta
        .get("requested_downloads")
        .and_then(|d| d.get(0))
        .and_then(|d| d.get("filepath"))
        .or_else(|| meta.get("filepath"))
        .or_else(|| meta.get("_filename"))
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .ok_or_else(|| DownloadError::YtDlp("no file reported".into()))?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    if size > limits.max_bytes {
        return Err(DownloadError::TooLarge {
            max_mb: mb(limits.max_bytes),
        });
    }
    if size < limits.min_bytes {
        return Err(DownloadError::TooSmall {
            got_mb: mb(size),
            min_mb: mb(limits.min_bytes),
        });
    }
    let source_url = meta
        .get("webpage_url")
        .and_then(Value::as_str)
        .unwrap_or(target)
        .to_string();
    Ok(Downloaded {
        path,
        meta: Some(meta),
        source_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn deno_beside_ytdlp_is_named_to_it_unless_path_has_it() {
        let dir = std::env::temp_dir().join(format!("ytdlp-js-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (yt, deno) = (dir.join("yt-dlp"), dir.join(layout::exe_name("deno")));
        std::fs::write(&yt, b"").unwrap();
        let none = YtDlp::with_runtime(yt.clone(), None);
        assert_eq!(none.deno, None, "no deno beside it");
        assert!(none.runtime_args().is_empty());
        std::fs::write(&deno, b"").unwrap();
        let y = YtDlp::with_runtime(yt.clone(), Some(PathBuf::from("/usr/bin/deno")));
        let mut want = std::ffi::OsString::from("deno:");
        want.push(&deno);
        assert_eq!(
            y.runtime_args(),
            vec![std::ffi::OsString::from("--js-runtimes"), want]
        );
        // The same deno on PATH: yt-dlp finds it itself.
        assert_eq!(YtDlp::with_runtime(yt, Some(deno.clone())).deno, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An HTTP server on `ip` that answers every request with `response`; returns its
    /// port.
    fn serve(ip: &str, response: String) -> u16 {
        serve_with(ip, move |_, conn| {
            let _ = conn.write_all(response.as_bytes());
        })
        .0
    }

    /// An HTTP server on `ip` whose answer to request `n` (from 0) is `answer(n, conn)`;
    /// returns its port and the count of requests so far.
    fn serve_with(
        ip: &str,
        answer: impl Fn(usize, &mut std::net::TcpStream) + Send + 'static,
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = std::sync::Arc::clone(&count);
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let n = seen.fetch_add(1, Ordering::SeqCst);
                answer(n, &mut conn);
            }
        });
        (port, count)
    }

    fn limits() -> Limits {
        Limits {
            min_bytes: 0,
            allow_private: true,
            retry_delays: vec![Duration::from_millis(10); 2],
            ..Limits::from_env()
        }
    }

    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chaarfm-dl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_rate_floor_trips_on_a_slow_window_only() {
        let l = Limits {
            min_rate: 16 * 1024,
            rate_window: Duration::from_secs(60),
            ..limits()
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut f = RateFloor::new(&l, t0);
        // Slow at first, but the window is not over: nothing to say yet.
        assert!(f.check(at(30), 10).is_ok());
        // 60 s brought 2 MB: fine, and a new window starts.
        assert!(f.check(at(60), 2 << 20).is_ok());
        // The next 61 s bring 12 bytes: a trickle, refused.
        let e = f.check(at(121), (2 << 20) + 12).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("download too slow: 0.0 KB in 61 s, less than 16 KB/s"),
            "{e}"
        );
        assert!(!e.is_transient(), "a slow source is not retried");
    }

    #[test]
    fn a_web_page_is_refused_by_its_content_type_and_audio_named_by_its_own() {
        let dir = test_dir("ctype");
        let page = serve(
            "127.0.0.1",
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 6\r\nConnection: close\r\n\r\n<html>".into(),
        );
        let e = http_download(
            &format!("http://127.0.0.1:{page}/song.mp3"),
            &dir,
            "j-a",
            &limits(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "not audio: the server sent text/html, a web page or document rather than a sound file"
        );
        let audio = serve(
            "127.0.0.1",
            "HTTP/1.1 200 OK\r\nContent-Type: audio/ogg\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".into(),
        );
        let got = http_download(
            &format!("http://127.0.0.1:{audio}/stream?id=1"),
            &dir,
            "j-b",
            &limits(),
        )
        .unwrap();
        assert_eq!(got, dir.join("j-b.ogg"), "named by its Content-Type");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cut_body_is_retried_and_a_4xx_is_not() {
        let dir = test_dir("retry");
        let get = |port: u16, stem: &str| {
            http_download(
                &format!("http://127.0.0.1:{port}/a.mp3"),
                &dir,
                stem,
                &limits(),
            )
        };
        let (port, count) = serve_with("127.0.0.1", |n, conn| {
            if n == 0 {
                // Announces 10 bytes, sends 3, and closes: a cut connection.
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
            } else {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabcdefghij",
                );
            }
        });
        let got = get(port, "j-a").unwrap();
        assert_eq!(std::fs::read(got).unwrap(), b"abcdefghij");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
        let (port, count) = serve_with("127.0.0.1", |_, conn| {
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        });
        let e = get(port, "j-b").unwrap_err();
        assert_eq!(e.to_string(), "download failed: HTTP 404");
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a 4xx is final"
        );
        // Cut every time: tried three times, then the job fails with the reason.
        let (port, count) = serve_with("127.0.0.1", |_, conn| {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
        });
        let e = get(port, "j-c").unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_trickling_source_fails_as_too_slow() {
        let dir = test_dir("trickle");
        let (port, count) = serve_with("127.0.0.1", |_, conn| {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n");
            // A byte every 50 ms, for far longer than the test waits.
            for _ in 0..2000 {
                if conn.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let l = Limits {
            rate_window: Duration::from_millis(500),
            ..limits()
        };
        let e =
            http_download(&format!("http://127.0.0.1:{port}/a.mp3"), &dir, "j-a", &l).unwrap_err();
        assert!(e.to_string().starts_with("download too slow: "), "{e}");
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "not retried"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_guard_refuses_loopback_by_address_by_name_and_after_a_redirect() {
        let dir = test_dir("guard");
        let dest = dir.join("x.mp3");
        let limits = || Limits {
            allow_private: false,
            ..limits()
        };
        let audio = serve(
            "127.0.0.1",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".into(),
        );
        let direct = format!("http://127.0.0.1:{audio}/x.mp3");
        let e = http_download(&direct, &dir, "x", &limits()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("refused {direct}: loopback address (pass --allow-private-urls to allow)")
        );
        let named = format!("http://localhost:{audio}/x.mp3");
        let e = http_download(&named, &dir, "x", &limits()).unwrap_err();
        assert!(e.to_string().contains("loopback address"), "{e}");
        // 127.0.0.2 stands in for a public host that redirects to loopback.
        let hop = serve(
            "127.0.0.2",
            format!("HTTP/1.1 302 Found\r\nLocation: {direct}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        );
        let public = "127.0.0.2".parse().unwrap();
        let e = fetch(
            &format!("http://127.0.0.2:{hop}/x.mp3"),
            &dir,
            "x",
            &limits(),
            Some(&super::super::guard::GuardResolver::exempting(public)),
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("refused {direct}: loopback address (pass --allow-private-urls to allow)"),
            "the redirect hop is checked"
        );
        assert!(!dest.exists() || std::fs::read(&dest).unwrap().is_empty());
        // Allowed: the same download works.
        let open = Limits {
            allow_private: true,
            ..limits()
        };
        http_download(&direct, &dir, "x", &open).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_direct_download_is_named_by_its_audio_extension_else_its_content_type() {
        let u = |s: &str| check_url(s).unwrap();
        assert_eq!(
            download_ext(&u("http://h/a/b.FLAC?sig=1"), "audio/mpeg"),
            "flac"
        );
        assert_eq!(download_ext(&u("http://h/page"), "audio/mpeg"), "mp3");
        assert_eq!(download_ext(&u("http://h/page"), ""), "audio");
        assert_eq!(download_ext(&u("http://h/x.html"), ""), "audio");
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_is_stalled_only_after_a_whole_window_without_growth() {
        use std::sync::atomic::AtomicU64;
        let window = Duration::from_secs(120);
        // Grows for 10 minutes, then goes silent: stalled 120 s after the last byte.
        let bytes = Arc::new(AtomicU64::new(0));
        let b = Arc::clone(&bytes);
        let start = tokio::time::Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..600 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                b.fetch_add(1, Ordering::SeqCst);
            }
        });
        stalled(window, || bytes.load(Ordering::SeqCst)).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(720) && took <= Duration::from_secs(730),
            "stalled after {took:?}"
        );
        feeder.await.unwrap();
        // Nothing at all: stalled after the window.
        let start = tokio::time::Instant::now();
        stalled(window, || 0).await;
        let took = start.elapsed();
        assert!(
            took >= window && took <= window + Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[test]
    fn a_cancelled_direct_download_stops_and_leaves_no_file() {
        let dir = test_dir("cancel");
        // Sends a header and 1 KB, then holds the connection open.
        let (port, _) = serve_with("127.0.0.1", |_, conn| {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n");
            for _ in 0..100 {
                if conn.write_all(&[7u8; 1024]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let cancel = Arc::new(AtomicBool::new(false));
        let (c, d) = (Arc::clone(&cancel), dir.clone());
        let t = std::thread::spawn(move || {
            http_download_until(
                &format!("http://127.0.0.1:{port}/a.mp3"),
                &d,
                "j-c",
                &limits(),
                &c,
            )
        });
        let written = wait_for(|| job_bytes(&dir, "j-c") > 0);
        assert!(written, "nothing written");
        cancel.store(true, Ordering::SeqCst);
        let e = t.join().unwrap().unwrap_err();
        assert!(matches!(e, DownloadError::Cancelled), "{e}");
        assert!(e.interrupted());
        assert_eq!(job_bytes(&dir, "j-c"), 0, "the partial file stayed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Polls `cond` for up to 10 s.
    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..1000 {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn what_counts_as_interrupted() {
        assert!(DownloadError::Killed(15).interrupted());
        assert!(DownloadError::YtDlp("ERROR: Interrupted by user".into()).interrupted());
        assert!(!DownloadError::YtDlp("ERROR: Private video".into()).interrupted());
        assert!(!DownloadError::Stalled(120).interrupted());
        assert_eq!(
            DownloadError::Killed(9).to_string(),
            "yt-dlp failed: killed by signal 9"
        );
    }
}
