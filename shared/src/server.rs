//! The ChaarFM worker protocol (`../shared/PROTOCOL.md`) and chaarfm-super's extension,
//! protocol 2 (`docs/PROTOCOL.md`): JSON text frames over one WebSocket.
//!
//! Incoming frames are parsed leniently ([`parse_server`]): a frame that is not JSON, has an
//! unknown type or lacks a job id is reported as [`Incoming::Ignored`] with the reason, so
//! the connection stays up.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Protocol version of the `hello` extension.
pub const PROTOCOL: u32 = 2;

/// The handshake header in which lane 0 offers [`PROTOCOL`] and a server that speaks it
/// answers with it (`docs/PROTOCOL.md`). Today's server ignores it and answers none, which
/// tells the worker at once that it gives one job per connection.
pub const PROTOCOL_HEADER: &str = "x-chaarfm-protocol";

/// Whether a handshake answer's [`PROTOCOL_HEADER`] value announces protocol 2 or later.
pub fn announces_protocol2(value: Option<&str>) -> bool {
    value
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|v| v >= PROTOCOL)
}

/// A download job's payload (`job_type` absent or `"download"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadJob {
    #[serde(default)]
    pub artist: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub table_name: Option<String>,
    #[serde(default)]
    pub youtube_url: Option<String>,
}

/// A `fetch_genre` job's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenreJob {
    pub genre: String,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub quality_config: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    Download(DownloadJob),
    Genre(GenreJob),
}

/// A job from the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerJob {
    pub job_id: String,
    pub kind: JobKind,
}

impl ServerJob {
    /// The server's job key: the `youtube_url`, else `artist::title` lowercased (the server
    /// never hands out two jobs with one key at once; a re-sent job has the same key).
    pub fn key(&self) -> String {
        match &self.kind {
            JobKind::Download(d) => match &d.youtube_url {
                Some(u) if !u.is_empty() => u.clone(),
                _ => format!(
                    "{}::{}",
                    d.artist.as_deref().unwrap_or(""),
                    d.title.as_deref().unwrap_or("")
                )
                .to_lowercase(),
            },
            JobKind::Genre(g) => format!("genre::{}", g.genre.to_lowercase()),
        }
    }
}

/// What a server frame means to a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Job(ServerJob),
    Ping,
    Welcome {
        protocol: u32,
        slots: usize,
    },
    Ack {
        job_id: String,
    },
    /// Not for us or not understood; the reason is logged and the frame skipped.
    Ignored(String),
}

/// Parses one text frame from the server.
pub fn parse_server(text: &str) -> Incoming {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Incoming::Ignored(format!("not JSON: {e}")),
    };
    let Some(kind) = v.get("type").and_then(Value::as_str) else {
        return Incoming::Ignored("no \"type\"".into());
    };
    match kind {
        "ping" => Incoming::Ping,
        "welcome" => Incoming::Welcome {
            protocol: v.get("protocol").and_then(Value::as_u64).unwrap_or(0) as u32,
            slots: v.get("slots").and_then(Value::as_u64).unwrap_or(1).max(1) as usize,
        },
        "ack" => match v.get("job_id").and_then(id_string) {
            Some(job_id) => Incoming::Ack { job_id },
            None => Incoming::Ignored("ack without job_id".into()),
        },
        "job" => {
            let Some(job_id) = v.get("job_id").and_then(id_string) else {
                return Incoming::Ignored("job without job_id".into());
            };
            let payload = v.get("payload").cloned().unwrap_or(Value::Null);
            let job_type = payload
                .get("job_type")
                .and_then(Value::as_str)
                .unwrap_or("download");
            let kind = match job_type {
                "download" => serde_json::from_value(payload).map(JobKind::Download),
                "fetch_genre" => serde_json::from_value(payload).map(JobKind::Genre),
                other => {
                    return Incoming::Ignored(format!("job {job_id} of unknown type {other:?}"))
                }
            };
            match kind {
                Ok(kind) => Incoming::Job(ServerJob { job_id, kind }),
                Err(e) => Incoming::Ignored(format!("job {job_id} has a bad payload: {e}")),
            }
        }
        other => Incoming::Ignored(format!("unknown message type {other:?}")),
    }
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The data of a successful download job, shaped like the Python worker's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackData {
    pub artist: String,
    pub title: String,
    pub youtube_id: String,
    pub vector: Vec<f32>,
    pub source_url: Option<String>,
}

/// Worker -> server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WorkerMsg {
    Hello {
        agent: String,
        slots: usize,
        protocol: u32,
    },
    Pong,
    Result(JobResult),
    /// Protocol 2: the job is handed back, not done (a fault of this machine, not the
    /// track's); the server puts it back at the front of the queue.
    Release {
        job_id: String,
        reason: String,
    },
    /// Protocol 2: send no jobs on this connection until `resume`.
    Pause {
        reason: String,
    },
    Resume,
}

/// `{"job_id", "status": "success", "data"}` or `{"job_id", "status": "failed", "error"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Success { data: Value },
    Failed { error: String },
}

/// Where a result belongs: the server and pairing code its job came from. A result is
/// only ever sent to the same pair (the server stores a result for an unknown job id in
/// whatever session it arrives on). The code itself is never kept: only its first two
/// characters, for people, and a hash of the pair, for matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Destination {
    /// The server's base URL, e.g. `https://chaarfm.onrender.com` (no secret in it).
    pub server: String,
    /// The pairing code as logs may show it (`AB***`).
    pub code: String,
    /// Hex SHA-256 of the server URL and the code: what matching compares.
    pub id: String,
}

/// One result waiting in the outbox (`--state-dir/outbox/<job>.<dest>.json`) until the
/// server has processed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub job_id: String,
    /// The connection (lane) that got the job: its result goes back on it, so that a
    /// legacy server frees that connection for its next job.
    pub lane: usize,
    pub msg: WorkerMsg,
    /// Where it belongs; `None` in entries written before destinations were recorded
    /// (those are never sent: their server is unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<Destination>,
    /// When the result was made (Unix seconds); `None` in older entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made: Option<u64>,
}

impl OutboxEntry {
    /// Largest outbox file read back (a result is ~4 KB).
    pub const MAX_BYTES: u64 = 1 << 20;

    /// Parses an outbox file's bytes; `None` if they are not an entry (a file damaged
    /// outside this program: the outbox moves it aside).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_version_of_2_or_more_announces_protocol_2() {
        assert!(announces_protocol2(Some("2")));
        assert!(announces_protocol2(Some(" 3 ")));
        for no in [None, Some(""), Some("1"), Some("two"), Some("-2")] {
            assert!(!announces_protocol2(no), "{no:?}");
        }
    }

    #[test]
    fn results_have_the_python_workers_shape() {
        // Compared as JSON values: key order means nothing to the server.
        let same = |msg: &WorkerMsg, want: &str| {
            let got: Value = serde_json::to_value(msg).unwrap();
            assert_eq!(got, serde_json::from_str::<Value>(want).unwrap());
        };
        let data = serde_json::to_value(TrackData {
            artist: "A".into(),
            title: "T".into(),
            youtube_id: "x".into(),
            vector: vec![1.0],
            source_url: None,
        })
        .unwrap();
        let ok = WorkerMsg::Result(JobResult {
            job_id: "j".into(),
            outcome: Outcome::Success { data },
        });
        same(
            &ok,
            r#"{"type":"result","job_id":"j","status":"success","data":{"artist":"A","title":"T","youtube_id":"x","vector":[1.0],"source_url":null}}"#,
        );
        let bad = WorkerMsg::Result(JobResult {
            job_id: "j".into(),
            outcome: Outcome::Failed { error: "e".into() },
        });
        same(
            &bad,
            r#"{"type":"result","job_id":"j","status":"failed","error":"e"}"#,
        );
        let hello = WorkerMsg::Hello {
            agent: "chaarfm-super/0.1.0".into(),
            slots: 3,
            protocol: PROTOCOL,
        };
        same(
            &hello,
            r#"{"type":"hello","agent":"chaarfm-super/0.1.0","slots":3,"protocol":2}"#,
        );
        same(&WorkerMsg::Pong, r#"{"type":"pong"}"#);
        same(
            &WorkerMsg::Release {
                job_id: "j".into(),
                reason: "disk full".into(),
            },
            r#"{"type":"release","job_id":"j","reason":"disk full"}"#,
        );
        same(
            &WorkerMsg::Pause {
                reason: "disk full".into(),
            },
            r#"{"type":"pause","reason":"disk full"}"#,
        );
        same(&WorkerMsg::Resume, r#"{"type":"resume"}"#);
    }

    #[test]
    fn server_frames_are_parsed_leniently() {
        let job = parse_server(
            r#"{"type":"job","job_id":"u1","payload":{"artist":"A","title":"B","table_name":"t","youtube_url":null}}"#,
        );
        let Incoming::Job(j) = job else {
            panic!("{job:?}")
        };
        assert_eq!(j.key(), "a::b");
        let g = parse_server(
            r#"{"type":"job","job_id":"u2","payload":{"job_type":"fetch_genre","genre":"Jazz","limit":5}}"#,
        );
        assert!(matches!(
            g,
            Incoming::Job(ServerJob {
                kind: JobKind::Genre(_),
                ..
            })
        ));
        assert_eq!(parse_server(r#"{"type":"ping"}"#), Incoming::Ping);
        assert_eq!(
            parse_server(r#"{"type":"welcome","protocol":2,"slots":4}"#),
            Incoming::Welcome {
                protocol: 2,
                slots: 4
            }
        );
        for bad in [
            "nope",
            "{}",
            r#"{"type":"job","payload":{}}"#,
            r#"{"type":"surprise"}"#,
            r#"{"type":"job","job_id":"x","payload":{"job_type":"weird"}}"#,
        ] {
            assert!(matches!(parse_server(bad), Incoming::Ignored(_)), "{bad}");
        }
    }
}
