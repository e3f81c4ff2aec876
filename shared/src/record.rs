//! The JSON line written per file by `embed` and `ingest`.

use serde::{Deserialize, Serialize};

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
        path: String,
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
        path: String,
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
    pub fn path(&self) -> &str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_their_documented_shape() {
        let ok = Record::Ok {
            path: "a.mp3".into(),
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
            path: "b.wav".into(),
            error: "file is empty".into(),
            file: None,
        };
        let line = serde_json::to_string(&bad).unwrap();
        assert_eq!(line, r#"{"path":"b.wav","error":"file is empty"}"#);
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), bad);
    }
}
