//! Getting a job's audio onto disk, in the supervisor (never in the children):
//! - plain http(s) audio URLs (a path ending in an audio extension) are streamed to disk
//!   directly, with size bounds enforced while streaming and connect/read timeouts;
//! - anything else (YouTube, other sites, searches) goes through yt-dlp as a subprocess:
//!   an argument vector, never a shell, `--` before the URL, M4A/AAC preferred (symphonia
//!   decodes it as is; no post-processing).
//!
//! Only http and https are accepted. Files live in a private directory and are removed
//! by the caller after the job.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chaarfm_child::layout;
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
    /// `--allow-private-urls`: the private-address guard is off (`server::guard`).
    pub allow_private: bool,
}

impl Limits {
    /// Defaults (0.5 MB, 50 MB, 15 s connect, 30 s per read, 10 min yt-dlp), overridden by
    /// `POST_DOWNLOAD_MIN_SIZE_MB`, `POST_DOWNLOAD_MAX_SIZE_MB` and
    /// `CHAARFM_READ_TIMEOUT_S`.
    pub fn from_env() -> Self {
        let mb = |name: &str, default: f64| -> u64 {
            let v = std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(default);
            (v.max(0.0) * 1024.0 * 1024.0) as u64
        };
        let read_s = std::env::var("CHAARFM_READ_TIMEOUT_S")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(30.0);
        Limits {
            min_bytes: mb("POST_DOWNLOAD_MIN_SIZE_MB", 0.5),
            max_bytes: mb("POST_DOWNLOAD_MAX_SIZE_MB", 50.0),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs_f64(read_s.max(0.1)),
            ytdlp_timeout: Duration::from_secs(600),
            allow_private: false,
        }
    }
}

/// Why a download failed; each message is what the server's failed result says.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("unsupported URL {0:?}: only http:// and https:// URLs are accepted")]
    Scheme(String),
    #[error("download failed: HTTP {0}")]
    Status(u16),
    #[error("download failed: {0}")]
    Transport(String),
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
pub fn check_url(url: &str) -> Result<(), DownloadError> {
    let lower = url.trim().to_ascii_lowercase();
    if url.starts_with('-') || !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(DownloadError::Scheme(url.to_string()));
    }
    Ok(())
}

fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let path = after_scheme
        .find('/')
        .map(|i| &after_scheme[i..])
        .unwrap_or("/");
    path.split(['?', '#']).next().unwrap_or(path)
}

fn host(url: &str) -> String {
    let after_scheme = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or(authority);
    host.split(':').next().unwrap_or(host).to_ascii_lowercase()
}

/// Whether `url` points straight at an audio file (downloaded directly, not via yt-dlp).
pub fn is_direct_audio(url: &str) -> bool {
    let p = url_path(url).to_ascii_lowercase();
    [
        ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".flac", ".wav", ".webm", ".mka",
    ]
    .iter()
    .any(|e| p.ends_with(e))
}

/// The `youtube_id` of a result: the video id for YouTube URLs, else the URL path's file
/// stem (what yt-dlp's generic extractor reports).
pub fn youtube_id(url: &str) -> String {
    let h = host(url);
    let path = url_path(url);
    if h == "youtu.be" {
        return path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("")
            .to_string();
    }
    if h.ends_with("youtube.com") {
        if let Some(q) = url.split_once('?').map(|(_, q)| q) {
            for pair in q.split(['&', '#']) {
                if let Some(v) = pair.strip_prefix("v=") {
                    return v.to_string();
                }
            }
        }
        for prefix in ["/shorts/", "/embed/", "/live/", "/v/"] {
            if let Some(rest) = path.strip_prefix(prefix) {
                return rest.split('/').next().unwrap_or("").to_string();
            }
        }
    }
    let file = path.rsplit('/').next().unwrap_or("");
    match file.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_string(),
        _ => file.to_string(),
    }
}

/// Streams `url` into `dest`, enforcing the size bounds as bytes arrive (blocking: run it
/// on a blocking thread).
pub fn http_download(url: &str, dest: &Path, limits: &Limits) -> Result<(), DownloadError> {
    let guard = (!limits.allow_private).then(super::guard::GuardResolver::default);
    fetch(url, dest, limits, guard)
}

/// [`http_download`] with the guard given (`None`: off).
fn fetch(
    url: &str,
    dest: &Path,
    limits: &Limits,
    guard: Option<super::guard::GuardResolver>,
) -> Result<(), DownloadError> {
    check_url(url)?;
    if let Some(g) = &guard {
        // Through a proxy (HTTP(S)_PROXY), names are resolved by the proxy: literal
        // addresses, at least, are checked here.
        g.check_literal(url)?;
    }
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
            guard,
        ),
    };
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Other(inner) => match inner.downcast::<super::guard::Refused>() {
            Ok(refused) => DownloadError::Refused(*refused),
            Err(other) => DownloadError::Transport(other.to_string()),
        },
        e => DownloadError::Transport(e.to_string()),
    })?;
    let status = resp.status().as_u16();
    if status >= 400 {
        return Err(DownloadError::Status(status));
    }
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    if let Some(len) = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if len > limits.max_bytes {
            return Err(DownloadError::Announced {
                announced_mb: mb(len),
                max_mb: mb(limits.max_bytes),
            });
        }
    }
    let mut reader = resp
        .into_body()
        .into_with_config()
        .limit(limits.max_bytes.saturating_add(1))
        .reader();
    let mut file = std::io::BufWriter::new(std::fs::File::create(dest)?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if total + 1 > limits.max_bytes && e.to_string().contains("limit") => {
                return Err(DownloadError::TooLarge {
                    max_mb: mb(limits.max_bytes),
                })
            }
            Err(e) if e.to_string().contains("timeout") => {
                return Err(DownloadError::Transport(format!(
                    "the server sent nothing for {} s (stalled)",
                    limits.read_timeout.as_secs_f64()
                )))
            }
            Err(e) => return Err(DownloadError::Transport(e.to_string())),
        };
        total += n as u64;
        if total > limits.max_bytes {
            return Err(DownloadError::TooLarge {
                max_mb: mb(limits.max_bytes),
            });
        }
        file.write_all(&buf[..n])?;
    }
    file.flush()?;
    if total < limits.min_bytes {
        return Err(DownloadError::TooSmall {
            got_mb: mb(total),
            min_mb: mb(limits.min_bytes),
        });
    }
    Ok(())
}

/// yt-dlp, and the JavaScript runtime it needs for YouTube (since late 2025) when that
/// is not on `PATH` (yt-dlp finds a `PATH` one itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YtDlp {
    pub path: PathBuf,
    /// deno beside yt-dlp (the bundle's or setup's private venv), passed explicitly.
    pub deno: Option<PathBuf>,
}

impl YtDlp {
    /// Finds yt-dlp: `CHAARFM_YTDLP`, then the bundle's private venv beside the executable
    /// (`tools/bin`, made by its install.sh), then `PATH`. A checkout's cargo sets
    /// `CHAARFM_YTDLP` to setup's `.deps/venv` (`.cargo/config.toml`).
    pub fn find() -> Option<YtDlp> {
        let name = layout::exe_name("yt-dlp");
        let path = std::env::var_os("CHAARFM_YTDLP")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let p = layout::tools_bin(&layout::exe_dir()?).join(&name);
                p.is_file().then_some(p)
            })
            .or_else(|| layout::on_path("yt-dlp"))?;
        Some(Self::with_runtime_beside(path))
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
        YtDlp { path, deno }
    }

    /// The command to run, with the JavaScript runtime named when needed.
    pub fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.args(self.runtime_args());
        cmd
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
    let mut cmd = ytdlp.command();
    cmd.args([
        "--no-playlist",
        "--no-progress",
        "--no-warnings",
        "--quiet",
        "--no-simulate",
        "--dump-json",
    ])
    .args(["-f", "bestaudio[ext=m4a]/bestaudio[acodec^=mp4a]/bestaudio"])
    .args(["--max-filesize", &format!("{}", limits.max_bytes)])
    .arg("-o")
    .arg(dir.join(format!("{stem}.%(ext)s")));
    if search {
        cmd.args(["--match-filter", "duration >= 60 & duration <= 600"]);
    }
    cmd.arg("--").arg(target).kill_on_drop(true);
    let out = tokio::time::timeout(limits.ytdlp_timeout, cmd.output())
        .await
        .map_err(|_| {
            DownloadError::YtDlp(format!(
                "timed out after {} s",
                limits.ytdlp_timeout.as_secs()
            ))
        })??;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(DownloadError::YtDlp(last.trim().to_string()));
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

    /// A one-shot HTTP server on `ip`: answers every request with `response`; returns
    /// its port.
    fn serve(ip: &str, response: String) -> u16 {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(response.as_bytes());
            }
        });
        port
    }

    fn limits() -> Limits {
        Limits {
            min_bytes: 0,
            ..Limits::from_env()
        }
    }

    #[test]
    fn the_guard_refuses_loopback_by_address_by_name_and_after_a_redirect() {
        let dir = std::env::temp_dir().join(format!("chaarfm-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("x.mp3");
        let audio = serve(
            "127.0.0.1",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".into(),
        );
        let direct = format!("http://127.0.0.1:{audio}/x.mp3");
        let e = http_download(&direct, &dest, &limits()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("refused {direct}: loopback address (pass --allow-private-urls to allow)")
        );
        let named = format!("http://localhost:{audio}/x.mp3");
        let e = http_download(&named, &dest, &limits()).unwrap_err();
        assert!(e.to_string().contains("loopback address"), "{e}");
        // 127.0.0.2 stands in for a public host that redirects to loopback.
        let hop = serve(
            "127.0.0.2",
            format!("HTTP/1.1 302 Found\r\nLocation: {direct}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        );
        let public = "127.0.0.2".parse().unwrap();
        let e = fetch(
            &format!("http://127.0.0.2:{hop}/x.mp3"),
            &dest,
            &limits(),
            Some(super::super::guard::GuardResolver::exempting(public)),
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
        http_download(&direct, &dest, &open).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"abc");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_http_and_https_are_accepted() {
        for ok in ["http://a/b.mp3", "HTTPS://x.y/z"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "file:///etc/passwd",
            "ftp://x/y.mp3",
            "-o/tmp/x",
            "--exec=rm",
            "javascript:1",
            "",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn youtube_ids_and_file_stems() {
        assert_eq!(
            youtube_id("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1"),
            "dQw4w9WgXcQ"
        );
        assert_eq!(youtube_id("https://youtu.be/abc123?si=x"), "abc123");
        assert_eq!(
            youtube_id("https://music.youtube.com/watch?list=x&v=Zz9"),
            "Zz9"
        );
        assert_eq!(youtube_id("https://youtube.com/shorts/short1"), "short1");
        assert_eq!(
            youtube_id("http://127.0.0.1:8080/audio/awakening.mp3?x=1"),
            "awakening"
        );
        assert!(is_direct_audio("http://h/a/b.FLAC?sig=1"));
        assert!(!is_direct_audio("https://www.youtube.com/watch?v=x"));
    }
}
