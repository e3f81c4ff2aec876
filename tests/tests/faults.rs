//! The supervisor's own environment under fire (issue: supervisor core): a full disk, a
//! lost or stalled log reader, a paused supervisor, two supervisors on one state dir, a
//! pool that stops, a frozen server, a removed runtime dir, awkward inputs. The rule:
//! no job is reported failed for a fault of this machine, none is lost, no healthy child
//! is killed. Needs the binary built with fault injection (scripts/test.sh does).
#![cfg(target_os = "linux")]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chaarfm_shared::record::{JsonPath, Record};
use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::{
    binary, corpus_dir, make_clips, read_records, stop, wait_until, Spawned, TempDir,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn super_cmd(mock: &Mock, state: &Path, extra: &[&str]) -> Command {
    let mut cmd = mock.worker(state);
    // The mock serves audio on loopback.
    cmd.arg("--allow-private-urls").args(extra);
    cmd
}

fn sigterm(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
}

/// A tmpfs of `size` at `dir` (we run as root here, as CI does); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn disk_full(protocol2: Option<usize>) {
    let audio = TempDir::new("diskfull-audio");
    let clips = make_clips(audio.path(), 4);
    let mut cfg = MockConfig::new(audio.path().to_path_buf());
    cfg.protocol2 = protocol2;
    let mock = Mock::start(cfg);
    let ids: HashSet<String> = clips
        .iter()
        .map(|c| mock.add_audio_job(&c.file_name().unwrap().to_string_lossy()))
        .collect();
    let root = TempDir::new("diskfull");
    // Room for the lock, sockets and small results, not for a 1-3 MB download.
    let disk = Tmpfs::mount(&root.join("state"), "256k");
    let sup = Spawned::spawn(super_cmd(&mock, &root.join("state"), &["--workers", "2"]));
    assert!(
        wait_until(Duration::from_secs(60), || sup.stderr_contains("pausing")),
        "no pause while the disk was full"
    );
    match protocol2 {
        Some(_) => assert!(
            wait_until(Duration::from_secs(30), || !mock.released().is_empty()),
            "no job was released while the disk was full"
        ),
        // Today's server: the session's last connection stays open through the pause
        // (closing it would delete the queue); its job waits in the worker.
        None => assert!(
            wait_until(Duration::from_secs(30), || mock.workers("TEST42") == 1),
            "{} connections open while paused",
            mock.workers("TEST42")
        ),
    }
    assert!(
        mock.failed().is_empty(),
        "failed results for a full disk: {:?}",
        mock.failed()
    );
    assert_eq!(
        mock.sessions_deleted(),
        0,
        "the pause closed the session's last connection"
    );
    // The disk frees: the worker resumes by itself and does every job.
    disk.resize("64m");
    let all = mock.wait_results(ids.len(), Duration::from_secs(180));
    let (code, stderr) = stop(sup);
    assert!(
        all,
        "not every job done after the disk freed; stderr:\n{stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(mock.failed().is_empty(), "{:?}", mock.failed());
    assert_eq!(mock.stored().len(), ids.len(), "stored once each");
    assert_eq!(mock.jobs_lost(), 0, "the server's queue was deleted");
    assert!(
        stderr.contains("taking jobs"),
        "no resume logged:\n{stderr}"
    );
    assert!(
        !stderr.contains("killing child"),
        "a healthy child was killed:\n{stderr}"
    );
}

#[test]
fn a_full_disk_hands_jobs_back_and_resumes_legacy() {
    disk_full(None);
}

#[test]
fn a_full_disk_hands_jobs_back_and_resumes_protocol_2() {
    disk_full(Some(3));
}

#[test]
fn a_pool_that_stops_hands_its_jobs_back_and_exits_non_zero() {
    let audio = TempDir::new("poolstop-audio");
    let clips = make_clips(audio.path(), 3);
    let mock = Mock::start(MockConfig::new(audio.path().to_path_buf()));
    // A pool that stops must close every connection: only the open /ingest page keeps
    // the coordinator's queue, and the log says so.
    mock.hold_ui(true);
    for c in &clips {
        mock.add_audio_job(&c.file_name().unwrap().to_string_lossy());
    }
    let state = TempDir::new("poolstop");
    // Every child that gets a job reports Fatal (its runtime broke): the pool stops.
    let mut cmd = super_cmd(&mock, state.path(), &["--workers", "2"]);
    // (Downloads are named after the job id.)
    cmd.env("CHAARFM_FAULT", "fatal=job-");
    let mut sup = Spawned::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(120), || !sup.running()),
        "did not stop"
    );
    let (code, _, stderr) = sup.wait();
    assert_eq!(
        code,
        Some(2),
        "a service manager must see a failure:\n{stderr}"
    );
    assert!(stderr.contains("injected fatal fault"), "{stderr}");
    assert!(
        stderr.contains(
            "keeps its queue (and the jobs handed back) only while its /ingest page is open"
        ),
        "{stderr}"
    );
    assert!(
        mock.received().is_empty(),
        "results were sent for a local fault: {:?}",
        mock.received()
    );
    assert!(
        wait_until(Duration::from_secs(10), || mock.queued() == clips.len()),
        "jobs not back in the queue: {} queued",
        mock.queued()
    );
}

#[test]
fn a_lost_log_reader_changes_nothing() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let ids: Vec<String> = ["caves.flac", "palace.wav"]
        .iter()
        .map(|n| mock.add_audio_job(n))
        .collect();
    let state = TempDir::new("nolog");
    let mut child = super_cmd(&mock, state.path(), &["--workers", "2", "-v"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line: every write to stderr is EPIPE.
    drop(child.stderr.take());
    let all = mock.wait_results(ids.len(), Duration::from_secs(120));
    sigterm(child.id());
    let status = child.wait().unwrap();
    assert!(all, "jobs not done with stderr closed");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status changed by a closed stderr"
    );
    assert!(mock.failed().is_empty());
}

#[test]
fn a_stalled_log_reader_blocks_nothing() {
    let audio = TempDir::new("stall-audio");
    let clips = make_clips(audio.path(), 6);
    let mock = Mock::start(MockConfig::new(audio.path().to_path_buf()));
    for c in &clips {
        mock.add_audio_job(&c.file_name().unwrap().to_string_lossy());
    }
    let state = TempDir::new("stall");
    // -vv traces every frame: the 64 KiB pipe fills within the first jobs, and nobody
    // ever reads it.
    let mut child = super_cmd(&mock, state.path(), &["--workers", "2", "-vv"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _held_unread = child.stderr.take();
    let all = mock.wait_results(clips.len(), Duration::from_secs(180));
    sigterm(child.id());
    let exited = wait_until(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    assert!(all, "jobs stalled behind a stalled log reader");
    assert!(exited, "exit held by a stalled stderr");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(mock.failed().is_empty());
}

#[test]
fn a_paused_supervisor_kills_no_healthy_child() {
    let dir = TempDir::new("sigstop");
    let clips = make_clips(dir.path(), 6);
    let out = dir.join("out.jsonl");
    let mut cmd = Command::new(binary());
    cmd.args(["ingest", "--workers", "2", "--out"])
        .arg(&out)
        .args(&clips);
    let mut sup = Spawned::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(60), || !read_records(&out).is_empty()),
        "no result before the pause"
    );
    // Ctrl-Z for longer than the heartbeat timeout (10 s); the children keep running.
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(13));
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGCONT).unwrap();
    assert!(wait_until(Duration::from_secs(180), || !sup.running()));
    let (code, summary, stderr) = sup.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        summary.contains("0 child restart(s)"),
        "children were killed after the pause:\n{summary}\n{stderr}"
    );
    let recs = read_records(&out);
    assert_eq!(recs.len(), clips.len());
    assert!(recs.iter().all(|r| matches!(r, Record::Ok { .. })));
}

#[test]
fn a_second_supervisor_on_one_state_dir_is_refused_naming_the_first() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let state = TempDir::new("twolock");
    let first = Spawned::spawn(super_cmd(&mock, state.path(), &["--workers", "1"]));
    let pid = first.id().to_string();
    assert!(
        wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(state.join("lock")).is_ok_and(|s| s.trim() == pid)
        }),
        "the first supervisor never took the lock"
    );
    let second = super_cmd(&mock, state.path(), &["--workers", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    let (code, _) = stop(first);
    assert_eq!(code, Some(0));
}

#[test]
fn results_in_a_frozen_servers_buffer_are_sent_again() {
    let audio = TempDir::new("frozen-audio");
    let clips = make_clips(audio.path(), 3);
    let mut cfg = MockConfig::new(audio.path().to_path_buf());
    cfg.port = 0;
    let mut first = Mock::start(cfg);
    let port = first.addr.port();
    let ids: HashSet<String> = clips
        .iter()
        .map(|c| first.add_audio_job(&c.file_name().unwrap().to_string_lossy()))
        .collect();
    let state = TempDir::new("frozen");
    // The job ids of the results in the outbox (from the entries: file names are an
    // encoding of the id and the destination).
    let in_outbox = || -> HashSet<String> {
        std::fs::read_dir(state.join("outbox"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| {
                        let v: serde_json::Value =
                            serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                        v.get("job_id")?.as_str().map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let sup = Spawned::spawn(super_cmd(&first, state.path(), &["--workers", "2"]));
    // Every job is out; the server freezes: it reads nothing more.
    assert!(
        wait_until(Duration::from_secs(30), || first.queued() == 0),
        "jobs never handed out"
    );
    first.freeze();
    let processed =
        || -> HashSet<String> { first.received().into_iter().map(|r| r.job_id).collect() };
    // Each result is either processed by the server (before the freeze) or held.
    if !wait_until(Duration::from_secs(120), || {
        in_outbox().union(&processed()).count() == ids.len()
    }) {
        let (_, stderr) = stop(sup);
        panic!("results never finished:\n{stderr}");
    }
    let before = processed();
    // Frozen, then gone: whatever sat in its buffers was never processed.
    first.stop();
    let mut cfg = MockConfig::new(audio.path().to_path_buf());
    cfg.port = port;
    // The same address again (another test's outgoing connection may hold the port as
    // its local one for a moment).
    let mut second = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            second = Mock::try_start(cfg.clone()).ok();
            second.is_some()
        }),
        "port {port} never came free"
    );
    let second = second.unwrap();
    let missing: HashSet<String> = ids.difference(&before).cloned().collect();
    assert!(
        !missing.is_empty(),
        "the freeze came too late to test anything"
    );
    let got = wait_until(Duration::from_secs(120), || {
        let again: HashSet<String> = second.received().into_iter().map(|r| r.job_id).collect();
        missing.is_subset(&again)
    });
    let (code, stderr) = stop(sup);
    assert!(
        got,
        "results lost with the frozen server; stderr:\n{stderr}"
    );
    assert_eq!(code, Some(0));
}

#[test]
fn a_frozen_server_is_noticed_by_its_silence() {
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let state = TempDir::new("silence");
    let sup = Spawned::spawn(super_cmd(
        &mock,
        state.path(),
        &["--workers", "1", "--lanes", "off"],
    ));
    assert!(wait_until(Duration::from_secs(30), || mock.connections() == 1));
    mock.freeze();
    // 30 s of silence (pings unanswered) is a dead connection: the worker reconnects.
    let noticed = wait_until(Duration::from_secs(60), || mock.connections() >= 2);
    let (_, stderr) = stop(sup);
    assert!(noticed, "a frozen server went unnoticed; stderr:\n{stderr}");
    assert!(stderr.contains("nothing heard from the server"), "{stderr}");
}

#[test]
fn a_removed_runtime_dir_is_recreated_and_nothing_fails() {
    let dir = TempDir::new("rundir");
    let clips = make_clips(dir.path(), 8);
    let runtime = dir.join("xdg");
    std::fs::create_dir_all(&runtime).unwrap();
    let out = dir.join("out.jsonl");
    let mut cmd = Command::new(binary());
    cmd.env("XDG_RUNTIME_DIR", &runtime)
        .args(["ingest", "--workers", "2", "--out"])
        .arg(&out)
        .args(&clips);
    let mut sup = Spawned::spawn(cmd);
    let mine = runtime.join("chaarfm-super").join(sup.id().to_string());
    assert!(
        wait_until(Duration::from_secs(60), || !read_records(&out).is_empty()),
        "no result"
    );
    assert!(mine.is_dir(), "sockets not under $XDG_RUNTIME_DIR");
    // A /tmp cleaner removes it; then a child dies and must be replaced.
    std::fs::remove_dir_all(&mine).unwrap();
    let mut seed = 7u32;
    assert!(chaarfm_tests::kill_random_child(sup.id(), &mut seed));
    assert!(wait_until(Duration::from_secs(240), || !sup.running()));
    let (code, _, stderr) = sup.wait();
    assert_eq!(code, Some(0), "{stderr}");
    let recs = read_records(&out);
    assert_eq!(recs.len(), clips.len());
    assert!(
        recs.iter().all(|r| matches!(r, Record::Ok { .. })),
        "{recs:?}"
    );
    assert!(!mine.exists(), "runtime dir left behind");
}

#[test]
fn a_non_utf8_file_name_embeds_and_its_path_round_trips() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new("latin1");
    let clip = make_clips(dir.path(), 1).remove(0);
    let name = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"caf\xe9 au lait.wav"));
    std::fs::rename(&clip, &name).unwrap();
    let out = Command::new(binary())
        .arg("embed")
        .arg(&name)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec: Record = serde_json::from_slice(out.stdout.trim_ascii_end()).unwrap();
    match rec {
        Record::Ok { path, vector, .. } => {
            assert!(matches!(path, JsonPath::Bytes { .. }), "{path:?}");
            assert_eq!(path.to_path_buf().unwrap(), name);
            assert_eq!(vector.len(), 200);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn inputs_that_cannot_work_are_refused_up_front() {
    let dir = TempDir::new("inputs");
    let fifo = dir.join("fifo.wav");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let t = std::time::Instant::now();
    let out = Command::new(binary())
        .args(["embed"])
        .arg(&fifo)
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not a regular file"), "{text}");
    assert!(text.contains("is a directory"), "{text}");
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "a FIFO was waited on"
    );

    for bad_out in ["/dev/full", "/dev/stdout"] {
        let r = Command::new(binary())
            .args(["ingest", "--out", bad_out])
            .arg(corpus_dir().join("caves.flac"))
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{bad_out}: {err}");
        assert!(err.contains("not a regular file"), "{bad_out}: {err}");
    }

    // A missing path is one error line; the rest goes on.
    let clips = make_clips(dir.path(), 1);
    let out_file = dir.join("out.jsonl");
    let r = Command::new(binary())
        .args(["ingest", "--workers", "1", "--out"])
        .arg(&out_file)
        .arg(dir.join("no-such-folder"))
        .arg(&clips[0])
        .output()
        .unwrap();
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(String::from_utf8_lossy(&r.stderr).contains("no-such-folder"));
    assert_eq!(read_records(&out_file).len(), 1);
}
