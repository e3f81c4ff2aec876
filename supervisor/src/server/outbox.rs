//! The outbox: every result is kept here until the server has shown it processed it
//! (protocol 2: its `ack`; today's server: the next job on the connection that carried
//! it), and sent again after a reconnect or a restart.
//!
//! Each result records where it belongs ([`Destination`]: the server and the pairing
//! code, hashed) and is only ever sent there: the server stores a result for an unknown
//! job id in whatever session it arrives on, so a result made for one server or session
//! and sent to another would be stored in the wrong place. An outbox opened for one
//! destination holds only its own results; the others stay on disk, are counted
//! ([`Outbox::others`]) and, after [`EXPORT_AFTER`], are moved to an export file of
//! the same line format ([`Outbox::exported`]), never dropped.
//!
//! Results live in memory and, when the disk allows, as one file each in
//! `--state-dir/outbox` (written to a temporary name, synced, renamed: a crash never
//! leaves half a result). A write that fails keeps the result in memory and is tried
//! again ([`Outbox::persist`]); at exit, what could not be delivered nor written there is
//! written anywhere possible ([`Outbox::rescue`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub use chaarfm_shared::server::{Destination, OutboxEntry as Entry, WorkerMsg};
use sha2::{Digest, Sha256};

use super::names::{hex, job_stem};

/// Results for another server or code older than this are moved to the export file.
pub const EXPORT_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The export file beside the outbox directory.
pub fn export_path(dir: &Path) -> PathBuf {
    dir.with_file_name("outbox-export.jsonl")
}

/// The destination of results made for `server` (a base URL) and pairing `code`.
pub fn destination(server: &str, code: &str) -> Destination {
    let server = server.trim().trim_end_matches('/').to_string();
    let mut h = Sha256::new();
    h.update(server.to_ascii_lowercase().as_bytes());
    h.update([0u8]);
    h.update(code.as_bytes());
    Destination {
        code: super::names::mask(code),
        id: hex(&h.finalize()),
        server,
    }
}

#[derive(Debug)]
struct Held {
    entry: Entry,
    seq: u64,
    on_disk: bool,
}

/// Results on disk that belong elsewhere, by destination (`None`: written by a version
/// that did not record it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Others(pub BTreeMap<Option<Destination>, usize>);

impl Others {
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}

#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    dest: Destination,
    held: Mutex<(u64, BTreeMap<String, Held>)>,
    /// Held across each file write and removal: one at a time. On Windows a rename onto
    /// a file that another rename or removal has open fails (sharing violation), so
    /// concurrent writes of one job id (`Hub` stores batches on blocking threads) would
    /// fail there; on Unix it costs nothing, a write being ~1 ms.
    files: Mutex<()>,
    others: Others,
    /// Moved to the export file at open: how many, and where.
    exported: Option<(usize, PathBuf)>,
}

/// What one file of the outbox directory is.
enum Found {
    Entry(Entry, SystemTime),
    Damaged,
}

/// Every `*.json` file of `dir` (stray temporary files removed), oldest first.
fn scan(dir: &Path, remove_tmp: bool) -> Vec<(PathBuf, Found)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(SystemTime, PathBuf)> = Vec::new();
    for p in rd.flatten().map(|e| e.path()) {
        match p.extension().and_then(|e| e.to_str()) {
            Some("json") => files.push((
                std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH),
                p,
            )),
            Some("tmp") if remove_tmp => {
                let _ = std::fs::remove_file(&p);
            }
            _ => {}
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|(mtime, p)| {
            let found = match read_entry(&p) {
                Some(e) => {
                    let made = e
                        .made
                        .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s))
                        .unwrap_or(mtime);
                    Found::Entry(e, made)
                }
                None => Found::Damaged,
            };
            (p, found)
        })
        .collect()
}

/// What the outbox directory holds, read only (`doctor`): results for `dest`, and the
/// others by destination.
pub fn survey(dir: &Path, dest: Option<&Destination>) -> (usize, Others) {
    let mut ours = 0;
    let mut others = Others::default();
    for (_, found) in scan(dir, false) {
        if let Found::Entry(e, _) = found {
            match (&e.dest, dest) {
                (Some(d), Some(want)) if d.id == want.id => ours += 1,
                (d, _) => *others.0.entry(d.clone()).or_default() += 1,
            }
        }
    }
    (ours, others)
}

/// One line per destination, for logs and `doctor`.
pub fn describe_others(others: &Others) -> Vec<String> {
    others
        .0
        .iter()
        .map(|(d, n)| match d {
            Some(d) => format!(
                "{n} result(s) for another server are kept in the outbox ({} with code {}); they are sent when chaarfm-super is started with that --url and --code",
                d.server, d.code
            ),
            None => format!(
                "{n} result(s) from an older chaarfm-super, which did not record their server, are kept in the outbox; they are never sent (their server is unknown) and move to the export file after 7 days"
            ),
        })
        .collect()
}

impl Outbox {
    /// Opens (creating) the outbox directory for results of `dest` and loads what a
    /// previous run left for it; stray temporary files of a write cut short are removed.
    /// Results for other destinations stay where they are, counted; those older than
    /// [`EXPORT_AFTER`] are appended to [`export_path`] and their files removed.
    pub fn open(dir: &Path, dest: Destination) -> std::io::Result<Self> {
        Self::open_at(dir, dest, SystemTime::now())
    }

    fn open_at(dir: &Path, dest: Destination, now: SystemTime) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut others = Others::default();
        let mut old: Vec<(PathBuf, Entry)> = Vec::new();
        let mut mine = Vec::new();
        for (p, found) in scan(dir, true) {
            match found {
                Found::Entry(e, _) if e.dest.as_ref().is_some_and(|d| d.id == dest.id) => {
                    mine.push(e)
                }
                Found::Entry(e, made) => {
                    if now.duration_since(made).unwrap_or_default() > EXPORT_AFTER {
                        old.push((p, e));
                    } else {
                        *others.0.entry(e.dest.clone()).or_default() += 1;
                    }
                }
                Found::Damaged => {
                    tracing::warn!(path = %p.display(), "unreadable outbox entry; moving it aside");
                    let _ = std::fs::rename(&p, p.with_extension("bad"));
                }
            }
        }
        let exported = if old.is_empty() {
            None
        } else {
            let path = export_path(dir);
            match export(&path, &old) {
                Ok(()) => {
                    for (p, _) in &old {
                        let _ = std::fs::remove_file(p);
                    }
                    Some((old.len(), path))
                }
                Err(e) => {
                    // Kept in place: counted, and tried again at the next start.
                    tracing::warn!(error = %e, path = %path.display(), "cannot write the outbox export file");
                    for (_, entry) in old {
                        *others.0.entry(entry.dest).or_default() += 1;
                    }
                    None
                }
            }
        };
        let ob = Self {
            dir: dir.to_path_buf(),
            dest,
            held: Mutex::new((0, BTreeMap::new())),
            files: Mutex::new(()),
            others,
            exported,
        };
        for entry in mine {
            ob.insert(entry, true);
        }
        Ok(ob)
    }

    /// Results on disk for other servers or codes (never sent by this run).
    pub fn others(&self) -> &Others {
        &self.others
    }

    /// How many results for other destinations were moved to the export file at open.
    pub fn exported(&self) -> Option<&(usize, PathBuf)> {
        self.exported.as_ref()
    }

    /// A result of this outbox's destination, made now.
    pub fn entry(&self, job_id: String, lane: usize, msg: WorkerMsg) -> Entry {
        let made = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok();
        Entry {
            job_id,
            lane,
            msg,
            dest: Some(self.dest.clone()),
            made,
        }
    }

    /// The file of `job_id`'s result: the one job-file rule, and the destination, so two
    /// servers' results never share a file.
    fn file(&self, job_id: &str) -> PathBuf {
        let tag = self.dest.id.get(..16).unwrap_or(&self.dest.id);
        self.dir.join(format!("{}.{tag}.json", job_stem(job_id)))
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
        debug_assert!(
            entry.dest.as_ref() == Some(&self.dest),
            "a result for another destination"
        );
        let written = self.write(entry);
        self.insert(entry.clone(), written.is_ok());
        written
    }

    /// Writes `entry`'s file, one write at a time ([`Outbox::files`]).
    fn write(&self, entry: &Entry) -> std::io::Result<()> {
        let _files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        write_entry(&self.file(&entry.job_id), entry)
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
            let _files = self.files.lock().unwrap_or_else(|p| p.into_inner());
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
            self.write(&e)?;
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

/// Appends `entries` to the export file, one JSON line each (the outbox's own format).
fn export(path: &Path, entries: &[(PathBuf, Entry)]) -> std::io::Result<()> {
    use std::io::Write;
    let mut text = Vec::new();
    for (_, e) in entries {
        serde_json::to_writer(&mut text, e).map_err(std::io::Error::other)?;
        text.push(b'\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&text)?;
    f.sync_all()
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
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
        }
        // Closed first: Windows renames a file more readily when no handle has it open.
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
    use chaarfm_shared::server::{JobResult, Outcome};

    fn here() -> Destination {
        destination("https://chaarfm.example/", "CODE42")
    }

    fn entry_for(dest: &Destination, id: &str, lane: usize) -> Entry {
        Entry {
            job_id: id.into(),
            lane,
            msg: WorkerMsg::Result(JobResult {
                job_id: id.into(),
                outcome: Outcome::Failed { error: "x".into() },
            }),
            dest: Some(dest.clone()),
            made: Some(1_000),
        }
    }

    fn entry(id: &str, lane: usize) -> Entry {
        entry_for(&here(), id, lane)
    }

    /// `<tmp>/chaarfm-outbox-<name>-<pid>`, removed with all in it when the test ends,
    /// passed or failed; the outbox is `outbox/` inside, so the export file beside it is
    /// this test's own, whatever else runs at the same time.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> TestDir {
            let root =
                std::env::temp_dir().join(format!("chaarfm-outbox-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            TestDir(root)
        }

        fn outbox(&self) -> PathBuf {
            self.0.join("outbox")
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn entries_survive_until_removed() {
        let root = TestDir::new("survive");
        let dir = root.outbox();
        let ob = Outbox::open(&dir, here()).unwrap();
        ob.put(&entry("a/../b", 0)).unwrap();
        ob.put(&entry("c", 1)).unwrap();
        std::fs::write(dir.join("stray.tmp"), b"half").unwrap();
        let again = Outbox::open(&dir, here()).unwrap();
        let ids: Vec<String> = again.pending().into_iter().map(|e| e.job_id).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&"a/../b".to_string()));
        assert!(!dir.join("stray.tmp").exists(), "stray temporary file kept");
        again.remove("a/../b");
        assert_eq!(again.pending().len(), 1);
    }

    #[test]
    fn a_destination_keeps_no_secret_and_tells_servers_and_codes_apart() {
        let d = destination("https://chaarfm.example/", "CODE42");
        assert_eq!(d, destination("https://chaarfm.example", "CODE42"));
        assert_eq!(
            (d.server.as_str(), d.code.as_str()),
            ("https://chaarfm.example", "CO***")
        );
        let text = serde_json::to_string(&entry("j", 0)).unwrap();
        assert!(
            !text.contains("CODE42"),
            "the code is on disk in full: {text}"
        );
        assert_ne!(d.id, destination("https://chaarfm.example", "CODE43").id);
        assert_ne!(d.id, destination("http://127.0.0.1:8765", "CODE42").id);
    }

    #[test]
    fn results_for_another_server_or_code_are_kept_counted_and_never_loaded() {
        let root = TestDir::new("others");
        let dir = root.outbox();
        let staging = destination("http://127.0.0.1:8765", "TEST42");
        let ob = Outbox::open(&dir, staging.clone()).unwrap();
        for id in ["s1", "s2", "same-id"] {
            ob.put(&ob.entry(id.into(), 0, entry(id, 0).msg)).unwrap();
        }
        drop(ob);
        // Production: none of staging's results is pending; they are counted.
        let prod = Outbox::open(&dir, here()).unwrap();
        assert!(prod.pending().is_empty());
        assert_eq!(prod.others().0.get(&Some(staging.clone())), Some(&3));
        let lines = describe_others(prod.others());
        assert!(
            lines[0].starts_with("3 result(s) for another server are kept in the outbox (http://127.0.0.1:8765 with code TE***)"),
            "{lines:?}"
        );
        // One job id on both servers: two files, neither overwrites the other.
        prod.put(&entry("same-id", 0)).unwrap();
        prod.remove("same-id");
        let back = Outbox::open(&dir, staging.clone()).unwrap();
        assert_eq!(
            back.pending().len(),
            3,
            "staging's results are all still there"
        );
        assert_eq!(survey(&dir, Some(&staging)).0, 3);
        assert_eq!(survey(&dir, Some(&here())).1.total(), 3);
    }

    #[test]
    fn after_seven_days_other_servers_results_move_to_the_export_file() {
        let root = TestDir::new("export");
        let dir = root.outbox();
        std::fs::create_dir_all(&dir).unwrap();
        let staging = destination("http://127.0.0.1:8765", "TEST42");
        let old = entry_for(&staging, "old", 0); // made at 1000 s after the epoch
        write_entry(&dir.join("j-old.aaaa.json"), &old).unwrap();
        // An entry of an older version: no destination, dated by its file.
        let mut legacy = entry("legacy", 1);
        legacy.dest = None;
        legacy.made = None;
        write_entry(&dir.join("legacy.json"), &legacy).unwrap();
        let now = SystemTime::now();
        let ob = Outbox::open_at(&dir, here(), now).unwrap();
        let (n, path) = ob.exported().expect("exported").clone();
        assert_eq!((n, path.clone()), (1, export_path(&dir)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(Entry::parse(text.trim_end().as_bytes()), Some(old));
        assert!(!dir.join("j-old.aaaa.json").exists());
        // The legacy one is recent by its file date: kept and counted, as unknown.
        assert_eq!(ob.others().0.get(&None), Some(&1));
        drop(ob);
        let later = now + EXPORT_AFTER + Duration::from_secs(60);
        let ob = Outbox::open_at(&dir, here(), later).unwrap();
        assert_eq!(ob.exported().map(|e| e.0), Some(1));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert!(ob.others().0.is_empty());
    }

    #[test]
    fn a_failed_write_keeps_the_result_in_memory_and_leaves_no_tmp() {
        let root = TestDir::new("ro");
        let dir = root.outbox();
        let ob = Outbox::open(&dir, here()).unwrap();
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
        assert!(ob.file("j1").exists());
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "stray files: {names:?}");
    }

    #[test]
    fn concurrent_writes_of_one_job_id_both_succeed() {
        let root = TestDir::new("cc");
        let dir = root.outbox();
        let ob = std::sync::Arc::new(Outbox::open(&dir, here()).unwrap());
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
    }

    /// Windows: a result file that another program holds open without
    /// FILE_SHARE_DELETE (a virus scanner, an indexer) cannot be replaced. The new result
    /// is then held in memory, counted unsaved, and written by the next `persist` once
    /// the handle is closed: never lost.
    #[cfg(windows)]
    #[test]
    fn a_result_whose_file_another_program_holds_open_is_kept_and_written_later() {
        use std::os::windows::fs::OpenOptionsExt;
        const FILE_SHARE_READ: u32 = 1;
        let root = TestDir::new("held");
        let dir = root.outbox();
        let ob = Outbox::open(&dir, here()).unwrap();
        ob.put(&entry("busy", 0)).unwrap();
        let scanner = std::fs::OpenOptions::new()
            .read(true)
            .share_mode(FILE_SHARE_READ)
            .open(ob.file("busy"))
            .unwrap();
        let newer = entry("busy", 3);
        assert!(
            ob.put(&newer).is_err(),
            "replaced a file held open without FILE_SHARE_DELETE"
        );
        assert_eq!(ob.unsaved(), 1);
        assert_eq!(ob.pending_ids(), vec![("busy".to_string(), 3)]);
        drop(scanner);
        ob.persist().unwrap();
        assert_eq!(ob.unsaved(), 0);
        assert_eq!(read_entry(&ob.file("busy")).map(|e| e.lane), Some(3));
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "stray files: {names:?}");
    }

    #[test]
    fn rescue_writes_what_the_outbox_cannot_hold_elsewhere() {
        let root = TestDir::new("rs");
        let dir = root.outbox();
        let ob = Outbox::open(&dir, here()).unwrap();
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
