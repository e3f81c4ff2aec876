//! The JSON line written per file by `embed` and `ingest`.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A file path in JSON output: a plain string when it is valid UTF-8, else
/// `{"bytes": "<base64>"}` (ripgrep's convention) holding the OS's bytes on Unix, or
/// UTF-16LE code units on Windows, so every name round-trips exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JsonPath {
    Text(String),
    Bytes { bytes: String },
}

impl JsonPath {
    pub fn from_path(p: &Path) -> Self {
        match p.to_str() {
            Some(s) => JsonPath::Text(s.to_string()),
            None => {
                let raw = crate::ipc::WirePath::from_path(p);
                JsonPath::Bytes {
                    bytes: base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()),
                }
            }
        }
    }

    /// The path it names (`None` for undecodable base64).
    pub fn to_path_buf(&self) -> Option<PathBuf> {
        match self {
            JsonPath::Text(s) => Some(PathBuf::from(s)),
            JsonPath::Bytes { bytes } => base64::engine::general_purpose::STANDARD
                .decode(bytes)
                .ok()
                .map(|b| crate::ipc::WirePath::from_bytes(b).to_path_buf()),
        }
    }
}

/// Lossy, for people.
impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonPath::Text(s) => f.write_str(s),
            JsonPath::Bytes { .. } => match self.to_path_buf() {
                Some(p) => p.display().fmt(f),
                None => f.write_str("<undecodable path>"),
            },
        }
    }
}

/// One MSD tag and its mean activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagScore {
    pub tag: String,
    pub score: f32,
}

/// `{"path", "vector", "patches", "duration_s"}` on success, `{"path", "error"}` on failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Ok {
        path: JsonPath,
        vector: Vec<f32>,
        patches: usize,
        duration_s: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tags: Option<Vec<TagScore>>,
        /// `ingest` only: the file's identity, so a rerun skips it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FileStamp>,
    },
    Failed {
        path: JsonPath,
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FileStamp>,
    },
}

/// Size and modification time of an ingested file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: u64,
}

impl Record {
    pub fn path(&self) -> &JsonPath {
        match self {
            Record::Ok { path, .. } | Record::Failed { path, .. } => path,
        }
    }

    pub fn file(&self) -> Option<FileStamp> {
        match self {
            Record::Ok { file, .. } | Record::Failed { file, .. } => *file,
        }
    }
}

/// Longest line read back from ingest's output (a record is ~4 KB); longer ones are skipped.
pub const MAX_LINE: usize = 1 << 20;

/// The files an earlier `ingest` run already wrote records for: each record's path and
/// file stamp, so a rerun skips them. Lines that do not parse (a write cut short by a
/// crash, a line over [`MAX_LINE`]) are skipped: that file is simply done again.
pub fn done_files(r: &mut impl BufRead) -> std::io::Result<HashSet<(JsonPath, FileStamp)>> {
    let mut done = HashSet::new();
    let mut line = Vec::new();
    while read_line_capped(r, &mut line, MAX_LINE)? {
        if let Ok(rec) = serde_json::from_slice::<Record>(&line) {
            if let Some(s) = rec.file() {
                done.insert((rec.path().clone(), s));
            }
        }
    }
    Ok(done)
}

/// Reads one line of at most `cap` bytes into `buf` (a longer one is skipped whole and
/// comes back empty); `Ok(false)` at the end.
pub fn read_line_capped(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<bool> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any);
        }
        any = true;
        let (take, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long && buf.len() + take <= cap {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            too_long = true;
            buf.clear();
        }
        r.consume(take + usize::from(end));
        if end {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_lines_are_read_with_a_cap() {
        let text = format!("short\n{}\nafter\nlast", "x".repeat(100));
        let mut r = std::io::BufReader::with_capacity(7, text.as_bytes());
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        while read_line_capped(&mut r, &mut buf, 50).unwrap() {
            lines.push(String::from_utf8(buf.clone()).unwrap());
        }
        assert_eq!(lines, ["short", "", "after", "last"]);
    }

    #[test]
    fn records_round_trip_in_their_documented_shape() {
        let ok = Record::Ok {
            path: JsonPath::Text("a.mp3".into()),
            vector: vec![1.0, 2.0],
            patches: 3,
            duration_s: 4.5,
            tags: None,
            file: None,
        };
        let line = serde_json::to_string(&ok).unwrap();
        assert_eq!(
            line,
            r#"{"path":"a.mp3","vector":[1.0,2.0],"patches":3,"duration_s":4.5}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), ok);
        let bad = Record::Failed {
            path: JsonPath::Text("b.wav".into()),
            error: "file is empty".into(),
            file: None,
        };
        let line = serde_json::to_string(&bad).unwrap();
        assert_eq!(line, r#"{"path":"b.wav","error":"file is empty"}"#);
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), bad);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_round_trip_as_base64_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"caf\xe9.wav"));
        let j = JsonPath::from_path(p);
        let text = serde_json::to_string(&j).unwrap();
        assert_eq!(text, r#"{"bytes":"Y2Fm6S53YXY="}"#);
        let back: JsonPath = serde_json::from_str(&text).unwrap();
        assert_eq!(back.to_path_buf().unwrap(), p);
        assert_eq!(
            serde_json::to_string(&JsonPath::from_path(Path::new("ok.wav"))).unwrap(),
            r#""ok.wav""#
        );
    }
}
