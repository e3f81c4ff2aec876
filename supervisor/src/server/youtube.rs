//! Whose fault is a yt-dlp failure? (`server::youtube`, the rule of docs/ARCHITECTURE.md
//! applied to YouTube.)
//!
//! ChaarFM drops a track reported failed, so a failure that is not the track's must never
//! be reported: YouTube often refuses a whole machine (its bot check, HTTP 429 or 403, a
//! yt-dlp too old for YouTube's latest player), and reporting that as each track's
//! failure burns the whole queue in minutes. [`classify`] reads yt-dlp's last error line:
//! - the **track's** when it names that video: unavailable, private, removed,
//!   age-restricted, blocked in this country, claimed, a live stream, filtered out by
//!   the search rules, no search hit;
//! - **this machine's** when it would fail for any video: the bot check, 429, 403, no
//!   network or DNS, TLS, extraction errors of an outdated yt-dlp, yt-dlp missing or
//!   crashing;
//! - **unknown** otherwise: the track's at first, but the same text on 3 consecutive
//!   different videos is this machine's ([`Breaker`]), so a message never seen before
//!   cannot burn the queue either. "Requested format is not available" is a breaker
//!   message too, tripping on 2 videos (it is how a broken nsig extraction shows).

use std::collections::VecDeque;

/// Why YouTube refuses this machine; each says what helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    BotCheck,
    RateLimited,
    Forbidden,
    Network,
    Tls,
    Outdated,
    Broken,
    /// The same unexplained error on several different videos.
    Repeated,
}

impl Cause {
    /// What the log says, with what helps.
    pub fn advice(self) -> &'static str {
        match self {
            Cause::BotCheck => "YouTube asks this machine to sign in to confirm it is not a bot: pass --cookies FILE (cookies.txt exported from a browser signed in to YouTube), or wait: the check usually lifts within hours",
            Cause::RateLimited => "YouTube rate-limits this machine (HTTP 429 / try again later): waiting helps; cookies of a signed-in browser (--cookies FILE) raise the limit",
            Cause::Forbidden => "YouTube answers HTTP 403 to this machine: usually an outdated yt-dlp (update it) or a flagged address (wait, or pass --cookies FILE)",
            Cause::Network => "yt-dlp cannot reach YouTube (no network, DNS or connection failing): check this machine's connection",
            Cause::Tls => "yt-dlp's TLS connection to YouTube fails (certificates, a proxy or the clock): check this machine's date and network",
            Cause::Outdated => "yt-dlp cannot read YouTube's current player: it is probably outdated; update it (pip install --upgrade \"yt-dlp[default]\")",
            Cause::Broken => "yt-dlp is missing or crashes: reinstall it (scripts/setup.sh, or the bundle's install script)",
            Cause::Repeated => "yt-dlp fails the same way on several different videos, so the fault is not theirs: check yt-dlp and the network; update yt-dlp",
        }
    }

    /// The label of `chaarfm_paused{reason="youtube"}`'s detail in logs.
    pub fn label(self) -> &'static str {
        match self {
            Cause::BotCheck => "bot check",
            Cause::RateLimited => "rate limited",
            Cause::Forbidden => "HTTP 403",
            Cause::Network => "network",
            Cause::Tls => "TLS",
            Cause::Outdated => "yt-dlp outdated",
            Cause::Broken => "yt-dlp broken",
            Cause::Repeated => "the same error on several videos",
        }
    }
}

/// What one yt-dlp failure says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// That video cannot be had: report the job failed.
    Track,
    /// Any video would fail: hand the job back, pause intake.
    Machine(Cause),
    /// Not known: the track's, unless the breaker trips (`trip_after` videos in a row).
    Unknown { trip_after: usize },
}

/// Track-fault texts, checked first: "Private video. Sign in if you've been granted
/// access" must not read as the bot check's "sign in".
const TRACK: &[&str] = &[
    "private video",
    "this video is private",
    "video unavailable",
    "this video has been removed",
    "has been terminated",
    "is no longer available",
    "confirm your age",
    "age-restricted",
    "inappropriate for some users",
    "not made this video available in your country",
    "not available in your country",
    "not available from your location",
    "geo restrict",
    "copyright",
    "this live event will begin",
    "premieres in",
    "is a live stream",
    "members-only",
    "join this channel",
    "only available to music premium",
    "does not pass filter",
    "no video results",
    "nothing found",
    "no file reported",
    "incomplete youtube id",
    "looks truncated",
];

/// This machine's, by cause (first match wins).
const MACHINE: &[(&str, Cause)] = &[
    ("not a bot", Cause::BotCheck),
    ("captcha", Cause::BotCheck),
    ("http error 429", Cause::RateLimited),
    ("too many requests", Cause::RateLimited),
    ("rate-limited", Cause::RateLimited),
    ("rate limit", Cause::RateLimited),
    ("try again later", Cause::RateLimited),
    ("http error 403", Cause::Forbidden),
    ("403: forbidden", Cause::Forbidden),
    ("temporary failure in name resolution", Cause::Network),
    ("failed to resolve", Cause::Network),
    ("name or service not known", Cause::Network),
    ("nodename nor servname", Cause::Network),
    ("getaddrinfo failed", Cause::Network),
    ("network is unreachable", Cause::Network),
    ("no route to host", Cause::Network),
    ("connection refused", Cause::Network),
    ("connection reset", Cause::Network),
    ("unable to connect", Cause::Network),
    ("certificate verify failed", Cause::Tls),
    ("ssl:", Cause::Tls),
    ("tlsv1", Cause::Tls),
    ("signature extraction failed", Cause::Outdated),
    ("nsig extraction failed", Cause::Outdated),
    ("failed to extract any player response", Cause::Outdated),
    ("unable to extract", Cause::Outdated),
    ("n challenge solving failed", Cause::Outdated),
    ("no supported javascript runtime", Cause::Outdated),
    ("confirm you are on the latest version", Cause::Outdated),
    ("traceback (most recent call last)", Cause::Broken),
    ("yt-dlp is not installed", Cause::Broken),
    ("killed by signal", Cause::Broken),
];

/// Machine texts that win over a track text in the same message ("Video unavailable.
/// YouTube is requiring a captcha challenge", "This content isn't available, try again
/// later").
const FIRST: &[(&str, Cause)] = &[
    ("not a bot", Cause::BotCheck),
    ("captcha", Cause::BotCheck),
    ("rate-limited", Cause::RateLimited),
    ("try again later", Cause::RateLimited),
];

/// Reads yt-dlp's error text (its last lines).
pub fn classify(message: &str) -> Verdict {
    let m = message.to_lowercase();
    if let Some((_, cause)) = FIRST.iter().find(|(t, _)| m.contains(t)) {
        return Verdict::Machine(*cause);
    }
    if TRACK.iter().any(|t| m.contains(t)) {
        return Verdict::Track;
    }
    if let Some((_, cause)) = MACHINE.iter().find(|(t, _)| m.contains(t)) {
        return Verdict::Machine(*cause);
    }
    if m.contains("requested format is not available") {
        return Verdict::Unknown { trip_after: 2 };
    }
    Verdict::Unknown { trip_after: 3 }
}

/// An error line without what names one video (`ERROR: [youtube] <id>: `), so the same
/// fault on different videos reads the same.
pub fn normalize(message: &str) -> String {
    // From yt-dlp's `ERROR:` on (our "yt-dlp failed: " before it, for one).
    let mut m = message
        .find("ERROR:")
        .map_or(message, |i| &message[i..])
        .trim();
    m = m.strip_prefix("ERROR:").unwrap_or(m).trim_start();
    if let Some(rest) = m.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        m = rest.1;
        if let Some((id, tail)) = m.split_once(": ") {
            if !id.contains(' ') {
                m = tail;
            }
        }
    }
    m.to_string()
}

/// The circuit breaker for unknown messages: the same text on `trip_after` consecutive
/// different videos is this machine's fault, and stays so for that text (jobs still in
/// flight fail the same way) until a download succeeds or fails for a known reason.
#[derive(Debug, Default)]
pub struct Breaker {
    text: String,
    videos: VecDeque<String>,
    tripped: bool,
}

impl Breaker {
    /// A job of `video` ended well or for a known reason.
    pub fn clear(&mut self) {
        *self = Breaker::default();
    }

    /// `video` failed with an unknown `message`: whether the breaker trips (or is
    /// tripped for that text).
    pub fn unknown(&mut self, video: &str, message: &str, trip_after: usize) -> bool {
        let text = normalize(message);
        if text != self.text {
            *self = Breaker {
                text,
                ..Breaker::default()
            };
        }
        if !self.videos.iter().any(|v| v == video) {
            self.videos.push_back(video.to_string());
        }
        self.tripped |= self.videos.len() >= trip_after;
        self.tripped
    }
}

/// Brings a stale yt-dlp up to date, when it lives in the worker's private venv: at
/// most once a day (a stamp in the state dir), one at a time, bounded in time, logged
/// with the old and new versions. A yt-dlp on `PATH` is someone else's: never touched.
pub struct Updater {
    stamp: std::path::PathBuf,
    /// Held by the running update, which a stop does not cancel: pip killed midway can
    /// leave the venv without yt-dlp ([`Updater::finish`] waits for it).
    busy: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// How long `pip install --upgrade` may take.
const UPDATE_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

impl Updater {
    pub fn new(state_dir: &std::path::Path) -> Updater {
        Updater {
            stamp: state_dir.join("ytdlp-updated"),
            busy: Default::default(),
        }
    }

    /// Updates `ytdlp` if it may be (its venv, not tried today); whether it was, so the
    /// caller tries the download again.
    pub async fn update(&self, ytdlp: &super::download::YtDlp) -> bool {
        let Some(python) = ytdlp.private_python() else {
            tracing::warn!(path = %ytdlp.path.display(), "yt-dlp looks outdated, and it is not in this worker's private environment, so it is left alone: update it (pip install --upgrade \"yt-dlp[default]\", or your package manager)");
            return false;
        };
        let one = std::sync::Arc::clone(&self.busy).lock_owned().await;
        let today = crate::date::iso(crate::date::today());
        if std::fs::read_to_string(&self.stamp).is_ok_and(|d| d.trim() == today) {
            tracing::debug!("yt-dlp was already updated (or tried) today");
            return false;
        }
        let _ = std::fs::write(&self.stamp, &today);
        let old = ytdlp.version().await.unwrap_or_else(|_| "unknown".into());
        tracing::warn!(%old, "yt-dlp looks outdated for YouTube: updating it in its private environment");
        let mut pip = tokio::process::Command::new(&python);
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--upgrade",
            "yt-dlp[default]",
        ]);
        // Its own task: a stop that cancels the download waiting for it lets it finish.
        let run = tokio::spawn(async move {
            let out = tokio::time::timeout(UPDATE_LIMIT, crate::os::helper::output(pip)).await;
            drop(one);
            out
        });
        let Ok(done) = run.await else {
            return false;
        };
        match done {
            Ok(Ok(out)) if out.status.success() => {
                let new = ytdlp.version().await.unwrap_or_else(|_| "unknown".into());
                tracing::warn!(%old, %new, "updated yt-dlp from {old} to {new}; trying the download again");
                true
            }
            Ok(Ok(out)) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let last = err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                tracing::warn!(status = %out.status, error = %last, "updating yt-dlp failed; tried again tomorrow");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot run pip to update yt-dlp");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "updating yt-dlp took over {} s; stopped",
                    UPDATE_LIMIT.as_secs()
                );
                false
            }
        }
    }

    /// Waits for an update under way to end (at exit).
    pub async fn finish(&self) {
        if self.busy.try_lock().is_err() {
            tracing::info!("waiting for the yt-dlp update under way to finish");
            let _ = tokio::time::timeout(UPDATE_LIMIT, self.busy.lock()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages as yt-dlp prints them (its `_video.py`, `_base.py`, `YoutubeDL.py`,
    /// networking errors, and its issue tracker), with whose fault each is.
    #[test]
    fn real_yt_dlp_messages_are_blamed_on_the_right_party() {
        use Cause::*;
        let m = Verdict::Machine;
        let cases: &[(&str, Verdict)] = &[
            ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm you\u{2019}re not a bot. Use --cookies-from-browser or --cookies for the authentication. See  https://github.com/yt-dlp/yt-dlp/wiki/FAQ#how-do-i-pass-cookies-to-yt-dlp  for how to manually pass cookies. Also see  https://github.com/yt-dlp/yt-dlp/wiki/Extractors#exporting-youtube-cookies  for tips on effectively exporting YouTube cookies", m(BotCheck)),
            ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm you're not a bot. This helps protect our community. Learn more", m(BotCheck)),
            ("ERROR: [youtube] abc: Video unavailable. YouTube is requiring a captcha challenge before playback", m(BotCheck)),
            ("ERROR: [youtube] abc: This content isn't available, try again later. The current session has been rate-limited by YouTube for up to an hour.", m(RateLimited)),
            ("ERROR: [youtube] abc: Unable to download API page: HTTP Error 429: Too Many Requests (caused by <HTTPError 429: Too Many Requests>)", m(RateLimited)),
            ("ERROR: unable to download video data: HTTP Error 403: Forbidden", m(Forbidden)),
            ("ERROR: [youtube] abc: Unable to download webpage: <urlopen error [Errno -3] Temporary failure in name resolution> (caused by TransportError('<urlopen error [Errno -3] Temporary failure in name resolution>'))", m(Network)),
            // yt-dlp 2026.10.26 here, with no network (doctor's YouTube check):
            ("ERROR: query \"music\" page 1: Unable to download API page: HTTPSConnection(host='www.youtube.com', port=443): Failed to resolve 'www.youtube.com' ([Errno -2] Name or service not known)", m(Network)),
            ("ERROR: [youtube] abc: Unable to download webpage: [Errno 101] Network is unreachable (caused by TransportError('[Errno 101] Network is unreachable'))", m(Network)),
            ("ERROR: [youtube] abc: Unable to download webpage: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate (_ssl.c:1006)", m(Tls)),
            ("ERROR: [youtube] abc: Signature extraction failed: Some formats may be missing", m(Outdated)),
            ("WARNING: [youtube] abc: nsig extraction failed: Some formats may be missing", m(Outdated)),
            ("ERROR: [youtube] abc: Failed to extract any player response; please report this issue on  https://github.com/yt-dlp/yt-dlp/issues?q= , filling out the appropriate issue template. Confirm you are on the latest version using  yt-dlp -U", m(Outdated)),
            ("ERROR: [youtube] abc: Unable to extract yt initial data; please report this issue", m(Outdated)),
            ("Traceback (most recent call last):\n  File \"yt_dlp/__main__.py\", line 17", m(Broken)),
            ("yt-dlp is not installed (run scripts/setup.sh, or set CHAARFM_YTDLP to its path)", m(Broken)),
            ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access to this video. Use --cookies-from-browser or --cookies for the authentication.", Verdict::Track),
            ("ERROR: [youtube] abc: Video unavailable", Verdict::Track),
            ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", Verdict::Track),
            ("ERROR: [youtube] abc: Video unavailable. This video is no longer available because the YouTube account associated with this video has been terminated.", Verdict::Track),
            ("ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate for some users. Use --cookies-from-browser or --cookies for the authentication.", Verdict::Track),
            ("ERROR: [youtube] abc: The uploader has not made this video available in your country", Verdict::Track),
            ("ERROR: [youtube] abc: Video unavailable. This video contains content from UMG, who has blocked it on copyright grounds", Verdict::Track),
            ("ERROR: [youtube] abc: This live event will begin in 3 hours.", Verdict::Track),
            ("ERROR: [youtube] abc: Join this channel to get access to members-only content like this video, and other exclusive perks.", Verdict::Track),
            ("ERROR: [youtube] abc: This video is only available to Music Premium members", Verdict::Track),
            ("nothing found", Verdict::Track),
            ("ERROR: [youtube] abc: Requested format is not available. Use --list-formats for a list of available formats", Verdict::Unknown { trip_after: 2 }),
            ("ERROR: [youtube] abc: Something we have never seen", Verdict::Unknown { trip_after: 3 }),
            ("timed out after 600 s", Verdict::Unknown { trip_after: 3 }),
        ];
        for (msg, want) in cases {
            assert_eq!(classify(msg), *want, "{msg}");
        }
    }

    #[test]
    fn the_breaker_trips_on_the_same_text_for_different_videos_only() {
        let mut b = Breaker::default();
        let e = |id: &str| format!("ERROR: [youtube] {id}: Something new broke");
        assert!(!b.unknown("v1", &e("v1"), 3));
        assert!(!b.unknown("v1", &e("v1"), 3), "the same video twice is one");
        assert!(!b.unknown("v2", &e("v2"), 3));
        assert!(b.unknown("v3", &e("v3"), 3), "three different videos");
        assert!(b.unknown("v4", &e("v4"), 3), "tripped for that text");
        // A different text, or a success, starts again.
        assert!(!b.unknown("v5", "ERROR: [youtube] v5: Another thing", 3));
        assert!(!b.unknown("v6", &e("v6"), 3));
        b.clear();
        assert!(!b.unknown("v7", &e("v7"), 3));
        assert!(!b.unknown("v8", &e("v8"), 3));
        assert!(b.unknown("v9", &e("v9"), 3));
        assert_eq!(normalize(&e("xyz")), "Something new broke");
        assert_eq!(
            normalize(&format!("yt-dlp failed: {}", e("xyz"))),
            "Something new broke"
        );
    }
}
