//! `chaarfm-super doctor`: whether this machine can run the worker, one line per check,
//! each either ok or what to do. Exit 0 only when nothing fails.
//!
//! The model is loaded and run here, in this process, on the probe input: a crash in
//! native code would end the doctor, not a worker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chaarfm_child::{model, runtime};
use serde::Serialize;

use crate::cli::DoctorArgs;
use crate::server::download::YtDlp;
use crate::{server, sizing};

/// yt-dlp releases older than this are likely broken by YouTube's changes.
const YTDLP_MAX_AGE_DAYS: i64 = 90;
/// Below this, downloads (up to 50 MB each, one per slot) may fill the disk.
const LOW_SPACE_BYTES: u64 = 1 << 30;
/// How long an external program or the server may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but something should be done.
    Warn,
    /// The worker cannot run (or cannot do its job) until this is fixed.
    Fail,
    /// Not checked (and why).
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
}

fn check(check: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        check,
        status,
        detail: detail.into(),
    }
}

/// Runs every check; returns the exit status (0: the worker can run).
pub async fn run(args: &DoctorArgs, model_arg: Option<&Path>) -> anyhow::Result<u8> {
    let mut checks = Vec::new();
    let ort = runtime_check(&mut checks);
    checks.push(model_check(model_arg, ort.is_some()));
    let inv = sizing::probe(ort.as_deref());
    let plan = sizing::decide(&inv, args.pool.workers, args.pool.device);
    let mut sizing_detail = plan.reasons.clone();
    for w in &plan.warnings {
        sizing_detail.push_str("; ");
        sizing_detail.push_str(w);
    }
    let sizing_status = if plan.warnings.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    checks.push(check("workers", sizing_status, sizing_detail));
    checks.push(cuda_check(&inv));
    checks.extend(ytdlp_checks(YtDlp::find(), crate::date::today()).await);
    checks.push(ffmpeg_check().await);
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(crate::os::default_state_dir);
    checks.push(state_dir_check(&state_dir));
    checks.push(outbox_check(
        &state_dir.join("outbox"),
        &args.server.url,
        args.server.code.as_deref(),
    ));
    checks.extend(server_checks(&args.server.url, args.server.code.as_deref()).await);
    if args.server.code.is_some() {
        let y = YtDlp::find().map(|y| YtDlp {
            cookies: args.cookies.clone(),
            ..y
        });
        checks.push(youtube_check(y.as_ref(), YOUTUBE_PROBE).await);
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if args.json {
        let doc = serde_json::json!({ "ok": failed == 0, "checks": checks });
        crate::logging::print(&format!("{doc}\n"));
    } else {
        crate::logging::print(&render(&checks, failed));
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// One line per check, then the verdict.
pub fn render(checks: &[Check], failed: usize) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        out.push_str(&format!("{tag} {:<10} {}\n", c.check, c.detail));
    }
    if failed == 0 {
        out.push_str("the worker can run on this machine\n");
    } else {
        out.push_str(&format!(
            "{failed} check(s) failed: the worker cannot run until they are fixed\n"
        ));
    }
    out
}

/// Finds and loads ONNX Runtime; its path when it loaded.
fn runtime_check(checks: &mut Vec<Check>) -> Option<PathBuf> {
    let path = match runtime::locate() {
        Ok(p) => p,
        Err(e) => {
            checks.push(check("runtime", Status::Fail, e.to_string()));
            return None;
        }
    };
    match runtime::environment() {
        Ok(_) => {
            checks.push(check(
                "runtime",
                Status::Ok,
                format!(
                    "ONNX Runtime {} from {}",
                    runtime::version().unwrap_or_else(|| "(version unknown)".into()),
                    path.display()
                ),
            ));
            Some(path)
        }
        Err(e) => {
            checks.push(check("runtime", Status::Fail, e.to_string()));
            None
        }
    }
}

/// Finds the model, checks its hash, and (runtime loaded) runs it on the probe input.
fn model_check(model_arg: Option<&Path>, runtime_ok: bool) -> Check {
    let path = match model::resolve(model_arg) {
        Ok(p) => p,
        Err(e) => return check("model", Status::Fail, e.to_string()),
    };
    if !runtime_ok {
        return match model::read(&path) {
            Ok(m) if m.hash_matches => check(
                "model",
                Status::Ok,
                format!(
                    "{} (sha256 verified; not run: no runtime)",
                    path.display()
                ),
            ),
            Ok(m) => check(
                "model",
                Status::Fail,
                format!(
                    "{} is not the published file (sha256 {}) and cannot be checked without the runtime",
                    path.display(),
                    m.sha256
                ),
            ),
            Err(e) => check("model", Status::Fail, e.to_string()),
        };
    }
    let opts = chaarfm_child::InferOptions::default();
    let mut net = match chaarfm_child::Musicnn::load(&path, &opts) {
        Ok(n) => n,
        Err(e) => return check("model", Status::Fail, e.to_string()),
    };
    match net.computes_published_values() {
        Ok(true) => check(
            "model",
            Status::Ok,
            format!(
                "{} verified (computes the published model's values)",
                path.display()
            ),
        ),
        Ok(false) => check(
            "model",
            Status::Fail,
            format!(
                "{} loads but does not compute the published model's values: fetch it again (models/README.md)",
                path.display()
            ),
        ),
        Err(e) => check("model", Status::Fail, e.to_string()),
    }
}

fn cuda_check(inv: &sizing::Inventory) -> Check {
    let detail = match (inv.gpus.len(), inv.cuda_build, inv.cuda_runtime) {
        (0, _, _) => "no NVIDIA GPU: inference runs on the CPU".to_string(),
        (n, true, true) => format!("{n} NVIDIA GPU(s) and the CUDA provider: used by `--device auto`"),
        (n, false, _) => format!("{n} NVIDIA GPU(s), but this build has no CUDA support: CPU only (build with --features cuda)"),
        (n, true, false) => format!("{n} NVIDIA GPU(s), but the CUDA provider library is not beside ONNX Runtime: CPU only (use the onnxruntime-gpu runtime)"),
    };
    check("cuda", Status::Ok, detail)
}

/// The release bundle's installer on this platform.
const INSTALLER: &str = if cfg!(windows) {
    "install.ps1"
} else {
    "install.sh"
};

/// yt-dlp found, its version and age, and its JavaScript runtime.
async fn ytdlp_checks(ytdlp: Option<YtDlp>, today: i64) -> Vec<Check> {
    let Some(y) = ytdlp else {
        return vec![check(
            "yt-dlp",
            Status::Fail,
            format!("not found: YouTube jobs would fail. Run the bundle's {INSTALLER} (or scripts/setup.sh in a checkout), or `pip install \"yt-dlp[default]\" deno`, or set CHAARFM_YTDLP"),
        )];
    };
    let version = match y.version().await {
        Ok(v) => v,
        Err(e) => {
            return vec![check(
                "yt-dlp",
                Status::Fail,
                format!(
                    "{} cannot run ({e}): reinstall it, or fix CHAARFM_YTDLP",
                    y.path.display()
                ),
            )]
        }
    };
    let mut out = vec![ytdlp_age_check(&y.path, &version, today)];
    let deno = y
        .deno
        .clone()
        .or_else(|| chaarfm_child::layout::on_path("deno"));
    out.push(match deno {
        None => check(
            "js-runtime",
            Status::Warn,
            "no deno beside yt-dlp or on PATH: YouTube downloads need a JavaScript runtime since late 2025; `pip install deno` in yt-dlp's venv",
        ),
        Some(d) => match run_version(&d, &["--version"]).await {
            Ok(v) => check(
                "js-runtime",
                Status::Ok,
                format!("{} ({})", v.lines().next().unwrap_or(""), d.display()),
            ),
            Err(e) => check(
                "js-runtime",
                Status::Warn,
                format!("{} cannot run ({e})", d.display()),
            ),
        },
    });
    out
}

/// The decoder's optional fallback for formats symphonia lacks.
async fn ffmpeg_check() -> Check {
    match chaarfm_child::ffmpeg::find() {
        None => check(
            "ffmpeg",
            Status::Ok,
            "not installed (optional): MP3, AAC, ALAC, Vorbis, Opus, FLAC, WAV, AIFF, CAF and MP1/MP2 decode without it; installing ffmpeg adds WMA, AC3, WavPack, APE, Musepack and more",
        ),
        Some(p) => match run_version(&p, &["-version"]).await {
            Ok(v) => check(
                "ffmpeg",
                Status::Ok,
                format!(
                    "{} ({}): decodes what symphonia cannot (WMA, AC3, WavPack, APE...)",
                    v.lines().next().unwrap_or("").trim(),
                    p.display()
                ),
            ),
            Err(e) => check(
                "ffmpeg",
                Status::Warn,
                format!("{} cannot run ({e}): formats beyond symphonia's will fail", p.display()),
            ),
        },
    }
}

/// `yt-dlp --version` is its release date, `YYYY.MM.DD[.N]`.
pub fn ytdlp_age_check(path: &Path, version: &str, today: i64) -> Check {
    let detail = format!("{version} ({})", path.display());
    match crate::date::version_age(version, today) {
        Some(age) if age > YTDLP_MAX_AGE_DAYS => check(
            "yt-dlp",
            Status::Warn,
            format!(
                "{detail} is {age} days old: YouTube breaks old versions; update it (`pip install -U \"yt-dlp[default]\"` in its venv)"
            ),
        ),
        Some(_) => check("yt-dlp", Status::Ok, detail),
        None => check(
            "yt-dlp",
            Status::Warn,
            format!("{detail}: version not a date, age unknown"),
        ),
    }
}

/// Runs `program args` (a version query) with a timeout; its trimmed stdout.
async fn run_version(program: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("no answer in {} s", PROBE_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("exit status {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The search the YouTube check runs.
const YOUTUBE_PROBE: &str = "ytsearch1:music";

/// One real search through yt-dlp (`--code` given: the worker is about to run): whether
/// YouTube answers this machine, and if not, whose fault and what helps
/// (`server::youtube`). A warning at worst: direct audio URLs work without YouTube.
async fn youtube_check(ytdlp: Option<&YtDlp>, query: &str) -> Check {
    use crate::server::download::RunError;
    use crate::server::youtube::{classify, Verdict};
    let Some(y) = ytdlp else {
        return check("youtube", Status::Skip, "no yt-dlp to ask YouTube with");
    };
    let args = [
        "--skip-download",
        "--dump-json",
        "--no-warnings",
        "--no-playlist",
        "--socket-timeout",
        "15",
        "--retries",
        "1",
        "--",
        query,
    ];
    let out =
        match y.run(args, Duration::from_secs(90)).await {
            Ok(out) => out,
            Err(RunError::TimedOut(_)) => return check(
                "youtube",
                Status::Warn,
                "a YouTube search took over 90 s: the network is slow or YouTube does not answer",
            ),
            Err(e) => return check("youtube", Status::Warn, format!("cannot run yt-dlp: {e}")),
        };
    if out.status.success() {
        return check(
            "youtube",
            Status::Ok,
            "a YouTube search works from this machine",
        );
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string();
    let shown: String = last.chars().take(300).collect();
    match classify(&last) {
        Verdict::Machine(cause) => check(
            "youtube",
            Status::Warn,
            format!(
                "YouTube refuses this machine ({}): {shown}. {}",
                cause.label(),
                cause.advice()
            ),
        ),
        _ => check(
            "youtube",
            Status::Warn,
            format!("a YouTube search failed: {shown}"),
        ),
    }
}

/// Results waiting in the outbox: for this server and code (with `--code`), and for
/// others, which are kept and never sent here. A warning, not a failure: the worker runs.
fn outbox_check(dir: &Path, url: &str, code: Option<&str>) -> Check {
    let dest = code.map(|c| server::outbox::destination(url, c));
    let (ours, others) = server::outbox::survey(dir, dest.as_ref());
    let mut parts = Vec::new();
    if dest.is_some() {
        parts.push(format!(
            "{ours} result(s) waiting for this server and code (sent at the next start)"
        ));
    }
    parts.extend(server::outbox::describe_others(&others));
    let export = server::outbox::export_path(dir);
    if export.is_file() {
        parts.push(format!(
            "older results for other servers were moved to {}",
            export.display()
        ));
    }
    if parts.is_empty() {
        return check("outbox", Status::Ok, "empty");
    }
    let status = if others.total() > 0 || export.is_file() {
        Status::Warn
    } else {
        Status::Ok
    };
    check("outbox", status, parts.join("; "))
}

/// The state dir can be created and written, and has room for downloads.
fn state_dir_check(dir: &Path) -> Check {
    if let Err(e) = server::probe_disk(&dir.join("tmp")) {
        return check(
            "state-dir",
            Status::Fail,
            format!(
                "{} is not writable ({e}): pass --state-dir DIR on a writable disk",
                dir.display()
            ),
        );
    }
    match crate::os::free_bytes(dir) {
        Some(free) if free < LOW_SPACE_BYTES => check(
            "state-dir",
            Status::Warn,
            format!(
                "{} writable, but only {} MB free: downloads pause when the disk is full; free some space",
                dir.display(),
                free >> 20
            ),
        ),
        Some(free) => check(
            "state-dir",
            Status::Ok,
            format!("{} writable, {:.1} GB free", dir.display(), free as f64 / 1e9),
        ),
        None => check(
            "state-dir",
            Status::Ok,
            format!("{} writable (free space unknown)", dir.display()),
        ),
    }
}

/// `GET /api/keepalive`, then the worker handshake with the code, closed at once.
async fn server_checks(base: &str, code: Option<&str>) -> Vec<Check> {
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
        return vec![check(
            "server",
            Status::Skip,
            "no pairing code: pass --code CODE (and --url URL) to check the server and the code",
        )];
    };
    let url = match server::worker_url(base, code) {
        Ok(u) => u,
        Err(e) => return vec![check("server", Status::Fail, e.to_string())],
    };
    let base = base.trim_end_matches('/').to_string();
    let b = base.clone();
    let got =
        tokio::task::spawn_blocking(move || server::probe::keepalive(&b, PROBE_TIMEOUT)).await;
    let reach = match got {
        Ok(Ok(s)) if (200..300).contains(&s) => {
            check("server", Status::Ok, format!("{base} reachable"))
        }
        Ok(Ok(s)) => check(
            "server",
            Status::Warn,
            format!("{base}/api/keepalive answered HTTP {s}: is --url a ChaarFM server?"),
        ),
        Ok(Err(e)) => {
            return vec![check(
                "server",
                Status::Fail,
                format!("cannot reach {base} ({e}): check --url and this machine's network"),
            )]
        }
        Err(e) => return vec![check("server", Status::Fail, e.to_string())],
    };
    vec![reach, pairing_check(&url, &base, code).await]
}

/// The handshake alone: no hello, and closed before any job is worked (a job the server
/// sent meanwhile goes back to its queue when the connection closes).
async fn pairing_check(url: &str, base: &str, code: &str) -> Check {
    use server::probe::Handshake;
    let masked = server::names::mask(code);
    match server::probe::handshake(url, base, &masked).await {
        Ok(mut opened) => {
            let _ = opened.ws.close(None).await;
            let speaks = if opened.protocol2 {
                "it speaks protocol 2: one connection carries every slot"
            } else {
                "today's protocol: one connection per slot"
            };
            check(
                "pairing",
                Status::Ok,
                format!("code {masked} accepted (connected and closed; no job taken); {speaks}"),
            )
        }
        Err(Handshake::Refused(r)) => check("pairing", Status::Fail, r.message),
        Err(Handshake::Failed(e)) => check(
            "pairing",
            Status::Fail,
            format!("worker connection failed: {e}"),
        ),
        Err(Handshake::TimedOut) => check(
            "pairing",
            Status::Fail,
            format!(
                "no handshake in {} s",
                server::probe::HANDSHAKE_TIMEOUT.as_secs()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ytdlp_versions_are_release_dates() {
        assert_eq!(crate::date::release_day("2026.10.26"), Some(20_752));
        assert_eq!(crate::date::release_day("2026.10.26.1"), Some(20_752));
        assert_eq!(crate::date::release_day("nightly"), None);
        assert_eq!(crate::date::release_day("2026.13.01"), None);
    }

    #[test]
    fn an_old_ytdlp_is_a_warning_that_says_to_update() {
        let p = Path::new("/x/yt-dlp");
        let today = crate::date::days_from_civil(2026, 11, 26);
        assert_eq!(ytdlp_age_check(p, "2026.10.26", today).status, Status::Ok);
        let old = ytdlp_age_check(p, "2025.06.30", today);
        assert_eq!(old.status, Status::Warn);
        assert!(old.detail.contains("days old") && old.detail.contains("pip install -U"));
        assert_eq!(ytdlp_age_check(p, "weird", today).status, Status::Warn);
    }

    #[test]
    fn the_verdict_counts_failures_only() {
        let checks = vec![
            check("a", Status::Ok, "fine"),
            check("b", Status::Warn, "meh"),
            check("c", Status::Skip, "later"),
        ];
        let text = render(&checks, 0);
        assert!(
            text.ends_with("the worker can run on this machine\n"),
            "{text}"
        );
        assert!(text.starts_with("ok   a"), "{text}");
        let text = render(&[check("d", Status::Fail, "broken")], 1);
        assert!(
            text.contains("FAIL d") && text.contains("1 check(s) failed"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn no_ytdlp_fails_and_says_how_to_install_it() {
        let c = ytdlp_checks(None, 0).await;
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, Status::Fail);
        assert!(c[0].detail.contains(INSTALLER), "{}", c[0].detail);
    }

    #[test]
    fn an_unwritable_state_dir_fails() {
        let f = std::env::temp_dir().join(format!("doctor-file-{}", std::process::id()));
        std::fs::write(&f, b"a file, not a dir").unwrap();
        let c = state_dir_check(&f.join("state"));
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("--state-dir"));
        std::fs::remove_file(&f).unwrap();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_youtube_check_names_the_bot_check_and_what_helps() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("chaarfm-doctor-yt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = |name: &str, body: &str| {
            let p = dir.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            YtDlp::with_runtime_beside(p)
        };
        let bot = fake(
            "bot",
            "echo \"ERROR: [youtube] x: Sign in to confirm you're not a bot. Use --cookies-from-browser or --cookies for the authentication.\" >&2; exit 1",
        );
        let c = youtube_check(Some(&bot), YOUTUBE_PROBE).await;
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.detail.contains("(bot check)") && c.detail.contains("--cookies FILE"),
            "{}",
            c.detail
        );
        let ok = fake("ok", "echo '{\"id\": \"x\"}'");
        assert_eq!(
            youtube_check(Some(&ok), YOUTUBE_PROBE).await.status,
            Status::Ok
        );
        assert_eq!(
            youtube_check(None, YOUTUBE_PROBE).await.status,
            Status::Skip
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
