//! The on-disk outbox: every result is written here before it is sent, and removed once
//! sent (legacy server) or acknowledged (protocol 2). After a reconnect or a restart of the
//! supervisor, what is still here is sent first. One file per result, written to a
//! temporary name, synced, then renamed, so a crash never leaves half a result.

use std::path::{Path, PathBuf};

use chaarfm_shared::server::WorkerMsg;
use serde::{Deserialize, Serialize};

/// One pending result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub job_id: String,
    /// The connection (lane) that got the job: its result goes back on it, so that a
    /// legacy server frees that connection for its next job.
    pub lane: usize,
    pub msg: WorkerMsg,
}

#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// Opens (creating) the outbox directory.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn file(&self, job_id: &str) -> PathBuf {
        // Job ids are the server's; keep only safe characters for a file name.
        let safe: String = job_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(120)
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    /// Stores a result durably.
    pub fn put(&self, entry: &Entry) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.file(&entry.job_id);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    /// Forgets a result that was delivered.
    pub fn remove(&self, job_id: &str) {
        let _ = std::fs::remove_file(self.file(job_id));
    }

    /// Every pending result, oldest first.
    pub fn pending(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| {
                (
                    std::fs::metadata(&p)
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH),
                    p,
                )
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| match std::fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(e) => Some(e),
                None => {
                    tracing::warn!(path = %p.display(), "unreadable outbox entry; moving it aside");
                    let _ = std::fs::rename(&p, p.with_extension("bad"));
                    None
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaarfm_shared::server::{JobResult, Outcome};

    #[test]
    fn entries_survive_until_removed() {
        let dir = std::env::temp_dir().join(format!("chaarfm-outbox-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ob = Outbox::open(&dir).unwrap();
        let msg = |id: &str| {
            WorkerMsg::Result(JobResult {
                job_id: id.into(),
                outcome: Outcome::Failed { error: "x".into() },
            })
        };
        ob.put(&Entry {
            job_id: "a/../b".into(),
            lane: 0,
            msg: msg("a/../b"),
        })
        .unwrap();
        ob.put(&Entry {
            job_id: "c".into(),
            lane: 1,
            msg: msg("c"),
        })
        .unwrap();
        let again = Outbox::open(&dir).unwrap();
        let ids: Vec<String> = again.pending().into_iter().map(|e| e.job_id).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"a/../b".to_string()));
        again.remove("a/../b");
        assert_eq!(again.pending().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
