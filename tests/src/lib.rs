//! Shared helpers for chaarfm-super's integration tests and benchmarks: where the corpus
//! and the built binary are, Essentia's reference vectors, cosine, and a WAV writer for
//! inputs made at test time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod bench;
pub mod mock;
#[cfg(target_os = "linux")]
pub mod soak;
pub mod wav;
#[cfg(unix)]
pub mod ytdlp;

/// `../shared/corpus` beside this repository.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus")
}

/// One entry of `refs.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub file: String,
    pub vector: Option<Vec<f32>>,
    pub patches: usize,
    pub seconds: f64,
    #[serde(default)]
    pub error: Option<String>,
}

/// Essentia's results for the corpus, by file name.
pub fn references() -> BTreeMap<String, Reference> {
    let path = corpus_dir().join("refs.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (the corpus lives in ../shared/corpus)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid: {e}", path.display()))
}

/// Cosine similarity, computed in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vectors of different lengths");
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// The `chaarfm-super` binary of the profile these tests were built with
/// (`target/<profile>/chaarfm-super`; test executables live in `target/<profile>/deps`).
/// Cargo does not rebuild it for a test or a bench, so one older than the sources it is
/// built from is refused: it would measure or test code that is no longer there.
pub fn binary() -> PathBuf {
    // Found and checked once per test process: tests call this for every command.
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND.get_or_init(find_binary).clone()
}

fn find_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let name = format!("chaarfm-super{}", std::env::consts::EXE_SUFFIX);
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join(&name);
        if p.is_file() {
            if let Some(src) = newer_source(&p) {
                panic!(
                    "{} is older than {}: run `cargo build --release --workspace` first (scripts/test.sh does)",
                    p.display(),
                    src.display()
                );
            }
            return p;
        }
    }
    panic!("{name} not built next to {}: run `cargo build --release --workspace` first (scripts/test.sh does)", exe.display());
}

/// A source file of `binary` modified after it was built, if any: the files cargo's
/// dep-info beside it (`chaarfm-super.d`) lists, so only what the binary is built from.
fn newer_source(binary: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let info = std::fs::read_to_string(binary.with_extension("d")).ok()?;
    // `target: dep dep ...` on the first line; spaces inside paths are escaped.
    let (_, deps) = info.lines().next()?.split_once(": ")?;
    deps.replace("\\ ", "\0")
        .split_whitespace()
        .map(|d| PathBuf::from(d.replace('\0', " ")))
        .find(|f| {
            std::fs::metadata(f)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
        })
}

/// Connect mode as the tests run it: the computing preferences that depend on the machine
/// held still (no battery, no config file of the user, other programs' CPU and the disk's
/// free space not watched), so a laptop on battery, a busy CI machine or a small disk
/// cannot pause a worker mid-test. `tests/tests/prefs.rs` tests the preferences.
pub fn machine_neutral(cmd: &mut std::process::Command) -> &mut std::process::Command {
    let none = std::env::temp_dir().join("chaarfm-tests-no-such-dir");
    cmd.args(["--pause-when-busy", "off", "--min-free-disk-gb", "0"])
        .env("CHAARFM_POWER_SUPPLY_DIR", &none)
        .env("XDG_CONFIG_HOME", &none)
}

/// A fresh, empty temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("chaarfm-test-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The deterministic test signal of `tests/fixtures/make_fixtures.py`: two tones plus
/// LCG noise at 16 kHz.
pub fn synthetic_signal(n: usize) -> Vec<f32> {
    let mut s: u64 = 12345;
    (0..n)
        .map(|i| {
            s = (1_664_525 * s + 1_013_904_223) % (1 << 32);
            let noise = (s as f64 / 4_294_967_296.0 - 0.5) * 2.0;
            let t = i as f64 / 16_000.0;
            let v = 0.3 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 0.2 * (2.0 * std::f64::consts::PI * 3100.0 * t).sin()
                + 0.1 * noise;
            v as f32
        })
        .collect()
}

/// A music-like stereo test signal at `rate`: a few notes with harmonics and noise,
/// `seconds` long, interleaved.
pub fn music_like(rate: u32, seconds: f64) -> Vec<[f32; 2]> {
    let n = (f64::from(rate) * seconds) as usize;
    let mut s: u32 = 99;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            let note = [220.0, 277.18, 329.63, 440.0][(t * 2.0) as usize % 4];
            let mut v = 0.0;
            for h in 1..6 {
                v += (0.25 / h as f64) * (2.0 * std::f64::consts::PI * note * h as f64 * t).sin();
            }
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let noise = (f64::from(s >> 8) / f64::from(1u32 << 24) - 0.5) * 0.05;
            let env = 0.6 + 0.4 * (2.0 * std::f64::consts::PI * 0.5 * t).sin().abs();
            [(v * env + noise) as f32, (v * env * 0.8 - noise) as f32]
        })
        .collect()
}

/// Short WAV clips cut from the corpus (mono, at each file's own rate, 16-bit): `n` clips
/// of 20-90 s, named `clip-NN-<source>.wav`, each a different stretch of the music.
pub fn make_clips(dir: &Path, n: usize) -> Vec<PathBuf> {
    make_clips_between(dir, n, 20, 90)
}

/// As [`make_clips`], with clips of `min_s..=max_s` seconds.
pub fn make_clips_between(dir: &Path, n: usize, min_s: usize, max_s: usize) -> Vec<PathBuf> {
    use chaarfm_child::decode::AudioStream;
    let sources = [
        "awakening.mp3",
        "coherence.m4a",
        "enemy-unknown.ogg",
        "caves.flac",
        "palace.wav",
        "wz-track5.webm",
    ];
    let mut decoded: Vec<(String, u32, Vec<f32>)> = Vec::new();
    for s in sources {
        let mut stream = AudioStream::open(&corpus_dir().join(s)).expect("decode corpus file");
        let rate = stream.sample_rate();
        let (mut all, mut chunk) = (Vec::new(), Vec::new());
        while stream.next_chunk(&mut chunk).expect("decode corpus file") {
            all.extend_from_slice(&chunk);
        }
        decoded.push((s.split('.').next().unwrap_or(s).to_string(), rate, all));
    }
    (0..n)
        .map(|i| {
            let (name, rate, pcm) = &decoded[i % decoded.len()];
            let want = min_s + (i * 37) % (max_s - min_s + 1);
            let len = (want * *rate as usize).min(pcm.len());
            let max_start = pcm.len() - len;
            let start = (i * 7_919 * *rate as usize / 10) % (max_start + 1);
            let p = dir.join(format!("clip-{i:04}-{name}.wav"));
            wav::write(&p, *rate, 1, wav::Encoding::Pcm16, &pcm[start..start + len])
                .expect("write clip");
            p
        })
        .collect()
}

/// Runs `chaarfm-super` with `args` and extra environment, waits, returns the output.
pub fn run_super(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(binary());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run chaarfm-super")
}

/// Reads an ingest output file into records.
pub fn read_records(path: &Path) -> Vec<chaarfm_shared::record::Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

/// One process as /proc/<pid>/stat shows it.
#[cfg(target_os = "linux")]
struct Proc {
    pid: u32,
    zombie: bool,
    ppid: u32,
    pgrp: u32,
}

/// Every process (Linux: /proc).
#[cfg(target_os = "linux")]
fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Fields after the command name (which may hold spaces) start after the
            // last ')': state, ppid, process group.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(Proc {
                pid,
                zombie: *f.first()? == "Z",
                ppid: f.get(1)?.parse().ok()?,
                pgrp: f.get(2)?.parse().ok()?,
            })
        })
        .collect()
}

/// PIDs of the live child processes of `parent` (zombies are dead already).
#[cfg(target_os = "linux")]
pub fn children_of(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == parent && !p.zombie)
        .map(|p| p.pid)
        .collect()
}

/// PIDs of the live processes whose process group is one of `groups`.
#[cfg(target_os = "linux")]
pub fn in_groups(groups: &[u32]) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| groups.contains(&p.pgrp) && !p.zombie)
        .map(|p| p.pid)
        .collect()
}

/// The niceness of a process (Linux: /proc), `None` if it is gone.
#[cfg(target_os = "linux")]
pub fn nice_of(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state is field 3, nice field 19.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(16)?.parse().ok()
}

/// Whether a process exists and is not a zombie (Linux: /proc).
#[cfg(target_os = "linux")]
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .map(|i| !stat[i + 2..].starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The most SIGKILLs a chaos test sends in one run: fewer than the attempts the pool
/// gives a job whose child something outside killed (`pool::policy::EXTERNAL_ATTEMPTS`,
/// 10). Then no job can be given up whatever the timing, so "nothing lost" holds on a
/// loaded machine too, where an unbounded schedule (one kill every 2 s) once killed one
/// job's child ten times in a row.
pub const CHAOS_KILLS: u32 = 9;

/// SIGKILLs one child of `parent`, chosen by a xorshift on `seed`; returns whether one was
/// killed. The chaos tests call it on their schedule (every 2 s).
#[cfg(target_os = "linux")]
pub fn kill_random_child(parent: u32, seed: &mut u32) -> bool {
    use nix::sys::signal::{kill, Signal};
    let kids = children_of(parent);
    if kids.is_empty() {
        return false;
    }
    *seed ^= *seed << 13;
    *seed ^= *seed >> 17;
    *seed ^= *seed << 5;
    let victim = kids[*seed as usize % kids.len()];
    kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).is_ok()
}

/// A background `chaarfm-super` whose stdout and stderr are read as they come: a full pipe
/// would block the supervisor's one thread (and with it the whole pool).
pub struct Spawned {
    pub child: std::process::Child,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
    err: Option<std::thread::JoinHandle<Vec<u8>>>,
    /// stderr as it arrives, for tests that wait for a log line.
    err_so_far: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Spawned {
    /// Spawns `cmd` with both output streams drained into memory.
    pub fn spawn(mut cmd: std::process::Command) -> Spawned {
        use std::io::Read;
        use std::process::Stdio;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chaarfm-super");
        let err_so_far = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let drain = |mut r: Box<dyn Read + Send>,
                     live: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    match r.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            if let Some(l) = &live {
                                l.lock().unwrap().extend_from_slice(&chunk[..n]);
                            }
                        }
                    }
                }
                buf
            })
        };
        let out = child.stdout.take().map(|s| drain(Box::new(s), None));
        let err = child
            .stderr
            .take()
            .map(|s| drain(Box::new(s), Some(std::sync::Arc::clone(&err_so_far))));
        Spawned {
            child,
            out,
            err,
            err_so_far,
        }
    }

    /// Whether stderr so far holds `text` (poll it with [`wait_until`]).
    pub fn stderr_contains(&self, text: &str) -> bool {
        String::from_utf8_lossy(&self.err_so_far.lock().unwrap()).contains(text)
    }

    /// stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.err_so_far.lock().unwrap()).into()
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the exit; returns the status code and everything it printed.
    pub fn wait(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().ok().and_then(|s| s.code());
        let text = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).to_string())
                .unwrap_or_default()
        };
        (status, text(self.out.take()), text(self.err.take()))
    }
}

/// SIGTERMs a background supervisor and waits (killing it after 120 s); returns its exit
/// status and stderr.
#[cfg(target_os = "linux")]
pub fn stop(sup: Spawned) -> (Option<i32>, String) {
    let (code, _, stderr) = stop_with_output(sup);
    (code, stderr)
}

/// As [`stop`], also returning stdout (connect mode's closing summary).
#[cfg(target_os = "linux")]
pub fn stop_with_output(mut sup: Spawned) -> (Option<i32>, String, String) {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(nix::unistd::Pid::from_raw(sup.id() as i32), Signal::SIGTERM);
    if !wait_until(std::time::Duration::from_secs(120), || !sup.running()) {
        let _ = sup.child.kill();
    }
    sup.wait()
}
