//! One reading of a job's URL: `http::Uri`, the type ureq itself parses every URL and
//! redirect hop into, so the checks here see the host and path ureq will use. No string
//! slicing anywhere else.

use ureq::http::Uri;

/// Hosts whose URLs go to yt-dlp; every other URL is downloaded directly, through the
/// guard.
const YOUTUBE_HOSTS: &[&str] = &[
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "music.youtube.com",
    "youtu.be",
];

/// An http(s) URL that cannot be mistaken for an option.
#[derive(Debug, Clone)]
pub struct JobUrl {
    uri: Uri,
}

/// Not an http(s) URL (its text, for the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotHttp(pub String);

impl JobUrl {
    pub fn parse(text: &str) -> Result<JobUrl, NotHttp> {
        let bad = || NotHttp(text.to_string());
        if text.starts_with('-') {
            return Err(bad());
        }
        let uri: Uri = text.trim().parse().map_err(|_| bad())?;
        let http = uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
        if !http || uri.authority().is_none() {
            return Err(bad());
        }
        Ok(JobUrl { uri })
    }

    /// The host, lowercase, without an IPv6 literal's brackets.
    pub fn host(&self) -> String {
        let h = self.uri.host().unwrap_or("");
        let h = h
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(h);
        h.to_ascii_lowercase()
    }

    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// A YouTube URL ([`YOUTUBE_HOSTS`], no user info, the default port): the only URLs
    /// yt-dlp is given.
    pub fn is_youtube(&self) -> bool {
        let Some(auth) = self.uri.authority() else {
            return false;
        };
        let https = self
            .uri
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let default_port = match self.uri.port_u16() {
            None => true,
            Some(p) => p == if https { 443 } else { 80 },
        };
        !auth.as_str().contains('@')
            && default_port
            && YOUTUBE_HOSTS.contains(&self.host().as_str())
    }

    /// The `youtube_id` of a result: the video id for YouTube URLs, else the path's file
    /// stem (what yt-dlp's generic extractor reports).
    pub fn youtube_id(&self) -> String {
        let (host, path) = (self.host(), self.path());
        if host == "youtu.be" {
            return first_segment(path.trim_start_matches('/')).to_string();
        }
        if host.ends_with("youtube.com") {
            let v = self
                .uri
                .query()
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| pair.strip_prefix("v="));
            if let Some(v) = v {
                return v.to_string();
            }
            for prefix in ["/shorts/", "/embed/", "/live/", "/v/"] {
                if let Some(rest) = path.strip_prefix(prefix) {
                    return first_segment(rest).to_string();
                }
            }
        }
        let file = path.rsplit('/').next().unwrap_or("");
        match file.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() => stem.to_string(),
            _ => file.to_string(),
        }
    }

    /// The extension of the path's last segment, lowercase.
    pub fn extension(&self) -> Option<String> {
        let file = self.path().rsplit('/').next()?;
        file.rsplit_once('.')
            .map(|(_, ext)| ext.to_ascii_lowercase())
    }
}

fn first_segment(s: &str) -> &str {
    s.split('/').next().unwrap_or("")
}

/// `{base}/ws/remote/{code}/worker` with http(s) -> ws(s); the base as given otherwise.
pub fn worker_url(base: &str, code: &str) -> Result<String, String> {
    let base = base.trim_end_matches('/');
    let url = JobUrl::parse(base)
        .map_err(|_| format!("server URL {base:?} must start with http:// or https://"))?;
    let ws = if url
        .uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        "wss"
    } else {
        "ws"
    };
    let auth = url.uri.authority().map_or("", |a| a.as_str());
    let path = url.path().trim_end_matches('/');
    Ok(format!("{ws}://{auth}{path}/ws/remote/{code}/worker"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> JobUrl {
        JobUrl::parse(s).unwrap()
    }

    fn is_yt(s: &str) -> bool {
        JobUrl::parse(s).is_ok_and(|u| u.is_youtube())
    }

    fn id(s: &str) -> String {
        url(s).youtube_id()
    }

    #[test]
    fn only_youtube_urls_go_to_yt_dlp() {
        for yes in [
            "https://www.youtube.com/watch?v=x",
            "https://youtube.com/watch?v=x",
            "https://m.youtube.com/watch?v=x",
            "https://music.youtube.com/watch?v=x",
            "https://youtu.be/abc",
            "HTTPS://WWW.YOUTUBE.COM/watch?v=x",
            "https://www.youtube.com:443/watch?v=x",
        ] {
            assert!(is_yt(yes), "{yes}");
        }
        for no in [
            "http://localhost:18931/admin",
            "http://router.lan/",
            "https://youtube.com.evil.example/watch?v=x",
            "https://evil.example/?u=https://www.youtube.com/",
            "https://www.youtube.com@127.0.0.1/watch?v=x",
            "https://www.youtube.com:8080/watch?v=x",
            "https://soundcloud.com/a/b",
            "ftp://youtube.com/x",
            "ytsearch1:x",
            "",
        ] {
            assert!(!is_yt(no), "{no}");
        }
    }

    #[test]
    fn youtube_ids_and_file_stems() {
        assert_eq!(
            id("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=1"),
            "dQw4w9WgXcQ"
        );
        assert_eq!(id("https://youtu.be/abc123?si=x"), "abc123");
        assert_eq!(id("https://music.youtube.com/watch?list=x&v=Zz9"), "Zz9");
        assert_eq!(id("https://youtube.com/shorts/short1"), "short1");
        assert_eq!(
            id("http://127.0.0.1:8080/audio/awakening.mp3?x=1"),
            "awakening"
        );
    }

    #[test]
    fn only_http_and_https_that_cannot_be_options() {
        for ok in ["http://a/b.mp3", "HTTPS://x.y/z", "http://[::1]:8/x"] {
            assert!(JobUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "file:///etc/passwd",
            "ftp://x/y.mp3",
            "-o/tmp/x",
            "--exec=rm",
            "javascript:1",
            "/just/a/path",
            "",
        ] {
            assert!(JobUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(url("http://[::1]:8/x").host(), "::1");
        assert_eq!(url("http://User@Host.Example:9/x").host(), "host.example");
    }

    #[test]
    fn extensions_and_worker_urls() {
        assert_eq!(
            url("http://h/a/b.FLAC?sig=1").extension().as_deref(),
            Some("flac")
        );
        assert_eq!(url("http://h/page").extension(), None);
        assert_eq!(
            worker_url("https://chaarfm.example/", "AB12").unwrap(),
            "wss://chaarfm.example/ws/remote/AB12/worker"
        );
        assert_eq!(
            worker_url("http://127.0.0.1:9000", "X").unwrap(),
            "ws://127.0.0.1:9000/ws/remote/X/worker"
        );
        assert!(worker_url("ftp://x", "X").is_err());
    }
}
