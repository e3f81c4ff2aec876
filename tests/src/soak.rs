//! The soak: many short jobs through the mock server while everything that can go wrong
//! overnight does: each connection dropped every 5 s, a child SIGKILLed every 2 s (once
//! a job was stored since the last kill, so a loaded machine still progresses), one
//! mock-server restart (its queue and storage survive, as a database would), and one
//! supervisor SIGKILL followed by a restart on the same state dir. It measures what was
//! lost, stored twice or changed against a calm run, and whether the supervisor leaks
//! (resident memory, file descriptors, files in `<state dir>/tmp`).
//!
//! Used by `cargo bench --bench soak` (1,000 jobs) and by the suite (150, tests/soak.rs).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::mock::{Mock, MockConfig};
use crate::{
    children_of, kill_random_child, make_clips_between, read_records, run_super, stop, wait_until,
    Spawned, TempDir,
};
use chaarfm_shared::record::Record;

/// Clips cut from the corpus for the soak, 4-15 s each, and their calm-run vectors.
pub struct Clips {
    pub dir: TempDir,
    /// Clip file name -> vector from a calm `ingest` run.
    pub calm: HashMap<String, Vec<f32>>,
    pub audio_s: f64,
}

impl Clips {
    /// Cuts `n` clips and embeds them once, calmly (`ingest --workers auto`).
    pub fn make(n: usize) -> Clips {
        let dir = TempDir::new("soak-clips");
        let clips = make_clips_between(dir.path(), n, 4, 15);
        let out = dir.join("calm.jsonl");
        let mut args: Vec<&std::ffi::OsStr> = vec!["ingest".as_ref(), "--out".as_ref()];
        args.push(out.as_os_str());
        args.push(dir.path().as_os_str());
        let calm_run = run_super(&args, &[]);
        assert!(
            calm_run.status.success(),
            "calm run failed: {}",
            String::from_utf8_lossy(&calm_run.stderr)
        );
        let mut calm = HashMap::new();
        let mut audio_s = 0.0;
        for r in read_records(&out) {
            let Record::Ok {
                path,
                vector,
                duration_s,
                ..
            } = r
            else {
                panic!("calm run failed a clip: {r:?}");
            };
            audio_s += duration_s;
            let name = path
                .to_path_buf()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
                .expect("clip name");
            calm.insert(name, vector);
        }
        assert_eq!(calm.len(), clips.len(), "calm run missed clips");
        std::fs::remove_file(&out).expect("remove calm output");
        Clips { dir, calm, audio_s }
    }
}

/// What a soak run saw.
#[derive(Debug)]
pub struct Report {
    pub protocol: &'static str,
    pub jobs: usize,
    pub stored: usize,
    /// Stored vectors that differ from the calm run's (max abs diff > 1e-6).
    pub changed: usize,
    pub max_abs_diff: f32,
    /// Results that came back "failed".
    pub failed: usize,
    /// Successful results storage skipped as already stored (a delivery repeated after a
    /// drop or a restart: the server's dedupe absorbs it).
    pub duplicate_deliveries: usize,
    pub child_kills: usize,
    pub connections: usize,
    pub mock_restarts: usize,
    pub supervisor_restarts: usize,
    /// Supervisor resident memory (KiB) and open descriptors at job `sample_at`, at the end,
    /// and the most descriptors seen in between.
    pub sample_at: usize,
    pub rss_kib: (u64, u64),
    pub fds: (usize, usize, usize),
    /// Files left in `<state dir>/tmp` after the supervisor exited.
    pub tmp_left: usize,
    pub exit_code: Option<i32>,
    pub wall_s: f64,
    pub audio_s: f64,
}

impl Report {
    /// The soak's pass conditions, as one list of what failed (empty: passed).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut check = |ok: bool, what: String| {
            if !ok {
                p.push(what);
            }
        };
        check(
            self.stored == self.jobs,
            format!("{} of {} jobs stored", self.stored, self.jobs),
        );
        check(
            self.changed == 0,
            format!("{} vectors differ from the calm run", self.changed),
        );
        check(self.failed == 0, format!("{} failed results", self.failed));
        let growth = self.rss_kib.1.saturating_sub(self.rss_kib.0);
        check(
            growth < 5 * 1024,
            format!("supervisor RSS grew {growth} KiB"),
        );
        check(
            self.fds.2 <= self.fds.0 + 16,
            format!("descriptors grew: {:?}", self.fds),
        );
        check(
            self.tmp_left == 0,
            format!("{} files left in tmp", self.tmp_left),
        );
        check(
            self.exit_code == Some(0),
            format!("exit {:?}", self.exit_code),
        );
        check(
            self.child_kills >= 1 && self.connections >= 3,
            format!(
                "not much chaos: {} kills, {} connections",
                self.child_kills, self.connections
            ),
        );
        check(
            self.mock_restarts == 1 && self.supervisor_restarts == 1,
            "restarts missing".into(),
        );
        p
    }

    pub fn print(&self) {
        println!(
            "soak {}: {} jobs, {:.0} s of audio in {:.1} s = {:.1}x realtime",
            self.protocol,
            self.jobs,
            self.audio_s,
            self.wall_s,
            self.audio_s / self.wall_s
        );
        println!(
            "  chaos: {} child SIGKILLs, {} connections (dropped every 5 s), {} mock restart, {} supervisor SIGKILL+restart",
            self.child_kills, self.connections, self.mock_restarts, self.supervisor_restarts
        );
        println!(
            "  lost {}, failed {}, changed vs calm {} (max abs diff {:e}), stored twice 0 ({} repeated deliveries absorbed by the server's dedupe)",
            self.jobs - self.stored.min(self.jobs),
            self.failed,
            self.changed,
            self.max_abs_diff,
            self.duplicate_deliveries
        );
        println!(
            "  supervisor RSS {:.1} MB at job {} -> {:.1} MB at the end ({:+.2} MB); fds {} -> {} (max {}); tmp files left {}; exit {:?}",
            self.rss_kib.0 as f64 / 1024.0,
            self.sample_at,
            self.rss_kib.1 as f64 / 1024.0,
            (self.rss_kib.1 as f64 - self.rss_kib.0 as f64) / 1024.0,
            self.fds.0,
            self.fds.1,
            self.fds.2,
            self.tmp_left,
            self.exit_code
        );
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn start(mock: &Mock, state: &Path, workers: &str) -> Spawned {
    let mut cmd = mock.worker(state);
    cmd.args(["--allow-private-urls", "--workers", workers])
        // Clips of 4-15 s are smaller than the Python worker's 0.5 MB floor.
        .env("POST_DOWNLOAD_MIN_SIZE_MB", "0");
    Spawned::spawn(cmd)
}

/// Runs the soak over every clip of `clips` in one protocol (`Some(slots)`: protocol 2).
pub fn run(clips: &Clips, protocol2: Option<usize>, workers: &str, timeout: Duration) -> Report {
    let jobs = clips.calm.len();
    let mut cfg = MockConfig::new(clips.dir.path().to_path_buf());
    cfg.drop_after = Some(Duration::from_secs(5));
    cfg.protocol2 = protocol2;
    let mut mock = Mock::start(cfg);
    // Connections drop every 5 s and the supervisor is killed once: the page is open, as
    // when a person runs a session, so the coordinator keeps the queue through it.
    mock.hold_ui(true);
    // Audio comes from another host, never restarted (YouTube, for ChaarFM).
    let audio = Mock::start(MockConfig::new(clips.dir.path().to_path_buf()));
    let mut names: Vec<&String> = clips.calm.keys().collect();
    names.sort();
    for n in &names {
        mock.add_audio_job_from(&audio.base_url(), n);
    }
    let state = TempDir::new("soak-state");
    let began = Instant::now();
    let mut sup = start(&mock, state.path(), workers);
    // The supervisor restart comes early, so the leak figures are all of one process.
    // Leaks are measured from job 100 (a third of the jobs in shorter runs): by then every
    // connection, child and buffer of a steady run exists.
    let (kill_sup_at, sample_at, restart_mock_at) = (jobs * 3 / 100, (jobs / 3).min(100), jobs / 2);
    let (mut kills, mut mock_restarts, mut sup_restarts) = (0, 0, 0);
    let mut seed = 0x2545_f491u32;
    let mut next_kill = Instant::now() + Duration::from_secs(2);
    let mut stored_at_kill = 0;
    let (mut rss0, mut fds0, mut fds_max) = (None::<u64>, 0usize, 0usize);
    let mut next_report = Instant::now() + Duration::from_secs(30);
    let done = wait_until(timeout, || {
        let stored = mock.stored_len();
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            println!(
                "  ... {:.0} s: {stored} of {jobs} stored, {} queued, {} connections, {kills} kills, {} failed",
                began.elapsed().as_secs_f64(),
                mock.queued(),
                mock.connections(),
                mock.failed().len()
            );
        }
        if stored >= jobs {
            return true;
        }
        if !sup.running() {
            return true;
        }
        if sup_restarts == 0 && stored >= kill_sup_at.max(1) {
            let pid = sup.id();
            let kids = children_of(pid);
            let _ = sup.child.kill();
            let _ = sup.child.wait();
            // Its children follow it (PDEATHSIG); the state dir's lock is free once it is gone.
            assert!(
                wait_until(Duration::from_secs(30), || kids
                    .iter()
                    .all(|&k| !crate::alive(k))),
                "children outlived the killed supervisor"
            );
            sup = start(&mock, state.path(), workers);
            sup_restarts += 1;
            return false;
        }
        if sup_restarts == 1 && rss0.is_none() && stored >= sample_at {
            rss0 = Some(rss_kib(sup.id()));
            fds0 = fd_count(sup.id());
        }
        if rss0.is_some() {
            fds_max = fds_max.max(fd_count(sup.id()));
        }
        if mock_restarts == 0 && stored >= restart_mock_at {
            mock.restart().expect("restart the mock on its port");
            mock_restarts += 1;
        }
        // A child SIGKILL every 2 s, once a job has been stored since the last one: on a
        // loaded machine, where a child's start and its job outlast 2 s, kills would
        // otherwise land on every attempt and nothing could finish.
        if Instant::now() >= next_kill && stored > stored_at_kill {
            next_kill = Instant::now() + Duration::from_secs(2);
            stored_at_kill = stored;
            if kill_random_child(sup.id(), &mut seed) {
                kills += 1;
            }
        }
        false
    });
    let pid = sup.id();
    let (rss1, fds1) = (rss_kib(pid), fd_count(pid));
    let wall_s = began.elapsed().as_secs_f64();
    let (exit_code, stderr) = stop(sup);
    let stored = mock.stored();
    let failed: Vec<String> = mock.failed().iter().map(|r| r.msg.to_string()).collect();
    assert!(
        done,
        "soak timed out: {} of {jobs} stored; failed results: {failed:?}; stderr tail:\n{}",
        stored.len(),
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let (mut changed, mut max_abs_diff) = (0, 0f32);
    for n in &names {
        let id = n.rsplit_once('.').map(|(s, _)| s).unwrap_or(n);
        let Some(got) = stored.get(id) else { continue };
        let want = &clips.calm[*n];
        let diff = got
            .iter()
            .zip(want)
            .map(|(&g, &w)| (g as f32 - w).abs())
            .fold(
                if got.len() == want.len() {
                    0.0
                } else {
                    f32::INFINITY
                },
                f32::max,
            );
        max_abs_diff = max_abs_diff.max(diff);
        changed += usize::from(diff > 1e-6);
    }
    let tmp_left = std::fs::read_dir(state.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    Report {
        protocol: if protocol2.is_some() {
            "protocol 2"
        } else {
            "legacy"
        },
        jobs,
        stored: stored.len(),
        changed,
        max_abs_diff,
        failed: failed.len(),
        duplicate_deliveries: mock.duplicates(),
        child_kills: kills,
        connections: mock.connections(),
        mock_restarts,
        supervisor_restarts: sup_restarts,
        sample_at,
        rss_kib: (rss0.unwrap_or(0), rss1),
        fds: (fds0, fds1, fds_max),
        tmp_left,
        exit_code,
        wall_s,
        audio_s: clips.audio_s,
    }
}
