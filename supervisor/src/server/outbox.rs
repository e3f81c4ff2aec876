//! The outbox: every result is kept here until the server has shown it processed it
//! (protocol 2: its `ack`; today's server: the next job on the connection that carried
//! it), and sent again after a reconnect or a restart.
//!
//! Results live in memory and, when the disk allows, as one file each in
//! `--state-dir/outbox` (written to a temporary name, synced, renamed: a crash never
//! leaves half a result). A write that fails keeps the result in memory and is tried
//! again ([`Outbox::persist`]); at exit, what could not be delivered nor written there is
//! written anywhere possible ([`Outbox::rescue`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use chaarfm_shared::server::OutboxEntry as Entry;

#[derive(Debug)]
struct Held {
    entry: Entry,
    seq: u64,
    on_disk: bool,
}

#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    held: Mutex<(u64, BTreeMap<String, Held>)>,
}

impl Outbox {
    /// Opens (creating) the outbox directory and loads what a previous run left; stray
    /// temporary files of a write cut short are removed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ob = Self {
            dir: dir.to_path_buf(),
            held: Mutex::new((0, BTreeMap::new())),
        };
        for entry in ob.load() {
            ob.insert(entry, true);
        }
        Ok(ob)
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

    fn insert(&self, entry: Entry, on_disk: bool) {
        let mut g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let seq = g.0;
        g.1.insert(
            entry.job_id.clone(),
            Held {
                entry,
                seq,
                on_disk,
            },
        );
    }

    /// Holds a result, and stores it durably if the disk allows. On an error the result
    /// is still held (in memory) and the caller learns the disk is failing.
    pub fn put(&self, entry: &Entry) -> std::io::Result<()> {
        let written = write_entry(&self.file(&entry.job_id), entry);
        self.insert(entry.clone(), written.is_ok());
        written
    }

    /// Forgets a result the server has shown it processed.
    pub fn remove(&self, job_id: &str) {
        let was = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .remove(job_id);
        if was.is_none_or(|h| h.on_disk) {
            let _ = std::fs::remove_file(self.file(job_id));
        }
    }

    /// Every held result, oldest first.
    pub fn pending(&self) -> Vec<Entry> {
        let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<&Held> = g.1.values().collect();
        v.sort_by_key(|h| h.seq);
        v.into_iter().map(|h| h.entry.clone()).collect()
    }

    /// Job id and lane of every held result, oldest first (what a lane must still send).
    pub fn pending_ids(&self) -> Vec<(String, usize)> {
        let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<&Held> = g.1.values().collect();
        v.sort_by_key(|h| h.seq);
        v.into_iter()
            .map(|h| (h.entry.job_id.clone(), h.entry.lane))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.held.lock().map(|g| g.1.len()).unwrap_or(0)
    }

    /// Results held only in memory.
    pub fn unsaved(&self) -> usize {
        self.held
            .lock()
            .map(|g| g.1.values().filter(|h| !h.on_disk).count())
            .unwrap_or(0)
    }

    /// Tries again to write the results held only in memory; `Err` with the first error
    /// while the disk still fails.
    pub fn persist(&self) -> std::io::Result<()> {
        let todo: Vec<Entry> = {
            let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
            g.1.values()
                .filter(|h| !h.on_disk)
                .map(|h| h.entry.clone())
                .collect()
        };
        for e in todo {
            write_entry(&self.file(&e.job_id), &e)?;
            if let Some(h) = self
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .get_mut(&e.job_id)
            {
                h.on_disk = true;
            }
        }
        Ok(())
    }

    /// At exit: results held only in memory go to the outbox if it works again, else to
    /// `fallback` (one JSON line each), else to stdout. Returns how many could be saved
    /// nowhere.
    pub fn rescue(&self, fallback: &Path) -> usize {
        if self.persist().is_ok() {
            return 0;
        }
        let left: Vec<Entry> = {
            let g = self.held.lock().unwrap_or_else(|p| p.into_inner());
            g.1.values()
                .filter(|h| !h.on_disk)
                .map(|h| h.entry.clone())
                .collect()
        };
        let mut text = Vec::new();
        for e in &left {
            if serde_json::to_writer(&mut text, e).is_ok() {
                text.push(b'\n');
            }
        }
        let appended = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(fallback)?;
            f.write_all(&text)?;
            f.sync_all()
        })();
        match appended {
            Ok(()) => {
                tracing::error!(
                    count = left.len(),
                    path = %fallback.display(),
                    "the outbox cannot be written: undelivered results saved here instead; move them into the outbox once the disk is fixed"
                );
                0
            }
            Err(e) => {
                tracing::error!(error = %e, path = %fallback.display(), "cannot save undelivered results anywhere on disk; printing them on stdout");
                crate::logging::print(&String::from_utf8_lossy(&text));
                use std::io::Write;
                match std::io::stdout().flush() {
                    Ok(()) => 0,
                    Err(_) => left.len(),
                }
            }
        }
    }

    fn load(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for p in dir.flatten().map(|e| e.path()) {
            match p.extension().and_then(|e| e.to_str()) {
                Some("json") => files.push((
                    std::fs::metadata(&p)
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH),
                    p,
                )),
                Some("tmp") => {
                    let _ = std::fs::remove_file(&p);
                }
                _ => {}
            }
        }
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| match read_entry(&p) {
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

fn read_entry(p: &Path) -> Option<Entry> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(p)
        .ok()?
        .take(Entry::MAX_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Entry::parse(&bytes)
}

/// Writes `entry` to `path` atomically; a failed write leaves no temporary file. The
/// temporary name is unique per write: two results for one job id (a re-sent job that
/// attached to the same work) may be written at once.
fn write_entry(path: &Path, entry: &Entry) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("{n}.tmp"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaarfm_shared::server::{JobResult, Outcome, WorkerMsg};

    fn entry(id: &str, lane: usize) -> Entry {
        Entry {
            job_id: id.into(),
            lane,
            msg: WorkerMsg::Result(JobResult {
                job_id: id.into(),
                outcome: Outcome::Failed { error: "x".into() },
            }),
        }
    }

    #[test]
    fn entries_survive_until_removed() {
        let dir = std::env::temp_dir().join(format!("chaarfm-outbox-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ob = Outbox::open(&dir).unwrap();
        ob.put(&entry("a/../b", 0)).unwrap();
        ob.put(&entry("c", 1)).unwrap();
        std::fs::write(dir.join("stray.tmp"), b"half").unwrap();
        let again = Outbox::open(&dir).unwrap();
        let ids: Vec<String> = again.pending().into_iter().map(|e| e.job_id).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"a/../b".to_string()));
        assert!(!dir.join("stray.tmp").exists(), "stray temporary file kept");
        again.remove("a/../b");
        assert_eq!(again.pending().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_keeps_the_result_in_memory_and_leaves_no_tmp() {
        let dir = std::env::temp_dir().join(format!("chaarfm-outbox-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ob = Outbox::open(&dir).unwrap();
        // The directory vanishes (or the disk fails): writes fail.
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(ob.put(&entry("j1", 0)).is_err());
        assert_eq!(ob.pending().len(), 1);
        assert_eq!(ob.unsaved(), 1);
        assert!(ob.persist().is_err());
        // It comes back: the held result is written.
        std::fs::create_dir_all(&dir).unwrap();
        ob.persist().unwrap();
        assert_eq!(ob.unsaved(), 0);
        assert!(dir.join("j1.json").exists());
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "stray files: {names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writes_of_one_job_id_both_succeed() {
        let dir = std::env::temp_dir().join(format!("chaarfm-outbox-cc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ob = std::sync::Arc::new(Outbox::open(&dir).unwrap());
        let writers: Vec<_> = (0..8)
            .map(|lane| {
                let ob = std::sync::Arc::clone(&ob);
                std::thread::spawn(move || {
                    (0..50).all(|_| ob.put(&entry("same-job", lane)).is_ok())
                })
            })
            .collect();
        for w in writers {
            assert!(w.join().unwrap(), "a write failed");
        }
        assert_eq!(ob.pending().len(), 1);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rescue_writes_what_the_outbox_cannot_hold_elsewhere() {
        let dir = std::env::temp_dir().join(format!("chaarfm-outbox-rs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ob = Outbox::open(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let _ = ob.put(&entry("j2", 0));
        let fallback =
            std::env::temp_dir().join(format!("chaarfm-rescue-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&fallback);
        assert_eq!(ob.rescue(&fallback), 0);
        let text = std::fs::read_to_string(&fallback).unwrap();
        assert!(text.contains("\"j2\""));
        let _ = std::fs::remove_file(&fallback);
    }
}
