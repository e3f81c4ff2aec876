//! The pool under fire: children SIGKILLed at random, poison files that segfault their
//! child, hanging and memory-hungry jobs, a killed supervisor, SIGTERM. Needs the binary
//! built with `--features chaarfm-super/fault-injection` (scripts/test.sh does).
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaarfm_shared::record::Record;
use chaarfm_tests::{
    alive, binary, children_of, kill_random_child, make_clips, nice_of, read_records, run_super,
    wait_until, Spawned, TempDir, CHAOS_KILLS,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn ingest_args<'a>(out: &'a Path, extra: &'a [&'a str], inputs: &'a [PathBuf]) -> Vec<&'a OsStr> {
    let mut a: Vec<&OsStr> = vec![OsStr::new("ingest"), OsStr::new("--out"), out.as_os_str()];
    a.extend(extra.iter().map(OsStr::new));
    a.extend(inputs.iter().map(|p| p.as_os_str()));
    a
}

fn by_path(records: &[Record]) -> BTreeMap<String, Record> {
    let mut m = BTreeMap::new();
    for r in records {
        assert!(
            m.insert(r.path().to_string(), r.clone()).is_none(),
            "{} written twice",
            r.path()
        );
    }
    m
}

fn vector(r: &Record) -> &[f32] {
    match r {
        Record::Ok { vector, .. } => vector,
        Record::Failed { path, error, .. } => panic!("{path} failed: {error}"),
    }
}

#[test]
fn chaos_random_child_sigkills_lose_nothing_and_change_nothing() {
    let dir = TempDir::new("chaos");
    let clips = make_clips(dir.path(), 40);

    let calm_out = dir.join("calm.jsonl");
    let calm = run_super(&ingest_args(&calm_out, &["--workers", "3"], &clips), &[]);
    assert!(
        calm.status.success(),
        "calm run: {}",
        String::from_utf8_lossy(&calm.stderr)
    );
    let calm = by_path(&read_records(&calm_out));
    assert_eq!(calm.len(), clips.len());

    let chaos_out = dir.join("chaos.jsonl");
    let mut cmd = Command::new(binary());
    cmd.args(ingest_args(&chaos_out, &["--workers", "3"], &clips));
    let mut sup = Spawned::spawn(cmd);
    let sup_pid = sup.id();
    let mut kills = 0;
    let mut seed = 0x2545_f491u32;
    while sup.running() {
        // A random child, every 2 s, at most CHAOS_KILLS of them (the chaos schedule,
        // not synchronisation).
        std::thread::sleep(Duration::from_secs(2));
        if kills < CHAOS_KILLS && kill_random_child(sup_pid, &mut seed) {
            kills += 1;
        }
    }
    let (code, summary, stderr) = sup.wait();
    println!("{kills} children killed during the chaos run\n{summary}");
    assert_eq!(code, Some(0), "chaos run: {stderr}");
    assert!(
        kills >= 3,
        "only {kills} kills: the chaos run was too short to test anything"
    );
    let chaos = by_path(&read_records(&chaos_out));
    assert_eq!(chaos.len(), clips.len(), "every file gets exactly one line");
    for (path, r) in &chaos {
        assert_eq!(
            vector(r),
            vector(&calm[path]),
            "{path}: vector differs from the calm run"
        );
    }
}

#[test]
fn a_poison_file_fails_after_three_attempts_while_others_succeed() {
    let dir = TempDir::new("poison");
    let mut clips = make_clips(dir.path(), 4);
    let poison = dir.join("poison-track.wav");
    std::fs::copy(&clips[0], &poison).unwrap();
    clips.push(poison.clone());
    let out = dir.join("out.jsonl");
    let r = run_super(
        &ingest_args(&out, &["--workers", "2"], &clips),
        &[("CHAARFM_FAULT", "segv=poison-track")],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let recs = by_path(&read_records(&out));
    assert_eq!(recs.len(), clips.len());
    match &recs[&poison.display().to_string()] {
        Record::Failed { error, .. } => assert_eq!(error, "child killed by SIGSEGV on 3 attempts"),
        other => panic!("poison file got {other:?}"),
    }
    for c in &clips[..4] {
        assert_eq!(vector(&recs[&c.display().to_string()]).len(), 200);
    }
}

#[test]
fn a_hanging_job_is_killed_at_its_timeout_and_retried() {
    let dir = TempDir::new("hang");
    let mut clips = make_clips(dir.path(), 2);
    let hang = dir.join("hang-track.wav");
    std::fs::copy(&clips[0], &hang).unwrap();
    clips.push(hang.clone());
    let out = dir.join("out.jsonl");
    let t = Instant::now();
    let r = run_super(
        &ingest_args(&out, &["--workers", "2", "--job-timeout", "3"], &clips),
        &[("CHAARFM_FAULT", "hang=hang-track")],
    );
    let took = t.elapsed();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let recs = by_path(&read_records(&out));
    match &recs[&hang.display().to_string()] {
        Record::Failed { error, .. } => assert_eq!(error, "job timed out after 3 s on 3 attempts"),
        other => panic!("hanging file got {other:?}"),
    }
    // Three attempts of 3 s each, one after another.
    assert!(
        took >= Duration::from_secs(9),
        "finished in {took:?}: the timeout was not waited for"
    );
    assert_eq!(vector(&recs[&clips[0].display().to_string()]).len(), 200);
}

#[test]
fn a_child_over_its_memory_ceiling_is_killed_and_the_job_fails_cleanly() {
    let dir = TempDir::new("grow");
    let mut clips = make_clips(dir.path(), 2);
    let grow = dir.join("grow-track.wav");
    std::fs::copy(&clips[0], &grow).unwrap();
    clips.push(grow.clone());
    let out = dir.join("out.jsonl");
    let r = run_super(
        &ingest_args(
            &out,
            &["--workers", "2", "--max-child-memory", "600"],
            &clips,
        ),
        &[("CHAARFM_FAULT", "grow=grow-track")],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let recs = by_path(&read_records(&out));
    match &recs[&grow.display().to_string()] {
        Record::Failed { error, .. } => {
            assert!(
                error.starts_with("child exceeded the memory limit")
                    && error.ends_with("on 3 attempts"),
                "{error}"
            )
        }
        other => panic!("memory hog got {other:?}"),
    }
    assert_eq!(vector(&recs[&clips[1].display().to_string()]).len(), 200);
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_child_alive() {
    let dir = TempDir::new("orphans");
    let clips = make_clips(dir.path(), 6);
    let out = dir.join("out.jsonl");
    let mut sup = Command::new(binary())
        .args(ingest_args(&out, &["--workers", "2"], &clips))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sup_pid = sup.id();
    assert!(
        wait_until(Duration::from_secs(30), || children_of(sup_pid).len() == 2),
        "children never started"
    );
    let kids = children_of(sup_pid);
    kill(Pid::from_raw(sup_pid as i32), Signal::SIGKILL).unwrap();
    sup.wait().unwrap();
    let gone = wait_until(Duration::from_secs(5), || kids.iter().all(|&k| !alive(k)));
    assert!(gone, "children {kids:?} outlived their supervisor");
}

#[test]
fn sigterm_drains_exits_zero_and_a_rerun_finishes_the_rest() {
    let dir = TempDir::new("drain");
    let clips = make_clips(dir.path(), 10);
    let out = dir.join("out.jsonl");
    let mut cmd = Command::new(binary());
    cmd.args(ingest_args(&out, &["--workers", "2"], &clips));
    let sup = Spawned::spawn(cmd);
    // Once the first result is written, jobs are in flight: stop now.
    assert!(
        wait_until(Duration::from_secs(60), || !read_records(&out).is_empty()),
        "no result was ever written"
    );
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGTERM).unwrap();
    let (code, stdout, stderr) = sup.wait();
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stdout.contains("ingest: "), "no summary: {stdout}");
    let first = by_path(&read_records(&out));
    assert!(
        first.len() < clips.len(),
        "SIGTERM came too late to test draining"
    );
    assert!(
        first.values().all(|r| matches!(r, Record::Ok { .. })),
        "a drained job was written as failed"
    );

    // The rerun skips what is done and does the rest; nothing twice.
    let r = run_super(&ingest_args(&out, &["--workers", "2"], &clips), &[]);
    assert!(r.status.success());
    let all = by_path(&read_records(&out));
    assert_eq!(all.len(), clips.len());
    let again = run_super(&ingest_args(&out, &["--workers", "2"], &clips), &[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
    assert_eq!(read_records(&out).len(), clips.len());
}

#[test]
fn children_run_at_the_niceness_asked_and_the_supervisor_at_its_own() {
    let dir = TempDir::new("nice");
    let clips = make_clips(dir.path(), 1);
    let hang = dir.join("hang-track.wav");
    std::fs::copy(&clips[0], &hang).unwrap();
    let own = nice_of(std::process::id()).expect("own niceness");
    let want = (own + 7).min(19);
    let mut cmd = Command::new(binary());
    cmd.args([
        "embed",
        "--workers",
        "2",
        "--job-timeout",
        "600",
        "--child-nice",
    ])
    .arg(want.to_string())
    .arg(&hang)
    .env("CHAARFM_FAULT", "hang=hang-track");
    let mut sup = Spawned::spawn(cmd);
    let pid = sup.id();
    // Both children up (one holds the hanging job), each lowered itself before serving.
    let saw = wait_until(Duration::from_secs(60), || {
        let kids = children_of(pid);
        kids.len() == 2 && kids.iter().all(|&k| nice_of(k) == Some(want))
    });
    let kids = children_of(pid);
    let nices: Vec<_> = kids.iter().map(|&k| nice_of(k)).collect();
    let sup_nice = nice_of(pid);
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let _ = sup.child.wait();
    assert!(
        saw,
        "children {kids:?} at niceness {nices:?}, wanted {want}"
    );
    assert_eq!(sup_nice, Some(own), "the supervisor's own priority changed");
    // PDEATHSIG takes the children with the supervisor.
    assert!(wait_until(Duration::from_secs(30), || kids
        .iter()
        .all(|&k| !alive(k))));
}
