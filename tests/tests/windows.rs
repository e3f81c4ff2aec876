//! The Windows build, run here under wine (issue 23): the release bundle's own
//! `chaarfm-super.exe`, with the ONNX Runtime DLL and the model beside it as a user
//! unpacks them. `scripts/test-windows.sh` makes the bundle and the wine prefix, then
//! runs this file (feature `windows-smoke`; nothing else can run it) with
//! `CHAARFM_WINDOWS_BUNDLE` naming the unpacked bundle.
//!
//! Windows processes under wine are Linux processes: a child is killed with SIGKILL, as
//! TerminateProcess would, and found by its command line (`chaarfm-super.exe __child`).
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use chaarfm_tests::mock::{Mock, MockConfig};
use chaarfm_tests::{corpus_dir, cosine, references, wait_until, Spawned, TempDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// One supervisor under wine at a time: children are told apart from another test's only
/// by their command line.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn bundle() -> PathBuf {
    let dir = std::env::var_os("CHAARFM_WINDOWS_BUNDLE")
        .map(PathBuf::from)
        .expect("CHAARFM_WINDOWS_BUNDLE is not set: run scripts/test-windows.sh");
    assert!(
        dir.join("chaarfm-super.exe").is_file(),
        "no chaarfm-super.exe in {}: run scripts/test-windows.sh",
        dir.display()
    );
    dir
}

/// `p` as a Windows program names it: wine's drive Z: is the Linux root.
fn win(p: &Path) -> String {
    let abs = std::path::absolute(p).expect("absolute path");
    format!("Z:{}", abs.display().to_string().replace('/', "\\"))
}

/// The bundle's exe under wine, finding its ONNX Runtime and model beside itself: the
/// checkout's settings (cargo's `[env]`, for Linux processes) are removed.
fn exe() -> Command {
    let mut cmd = Command::new("wine");
    // stdin never a terminal: wine would give the program a console of its own, as
    // Explorer does, and it would wait for Enter at the end.
    cmd.arg(bundle().join("chaarfm-super.exe"))
        .stdin(std::process::Stdio::null())
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("CHAARFM_MODEL")
        .env_remove("CHAARFM_YTDLP");
    cmd
}

/// Linux PIDs of the bundle's child processes now running under wine.
fn wine_children() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains("chaarfm-super.exe __child")
            })
        })
        .filter(|pid| chaarfm_tests::alive(*pid))
        .collect()
}

fn file_name(path: &str) -> &str {
    path.rsplit(['\\', '/']).next().unwrap_or(path)
}

/// Each JSON line's vector (or error), by file name, checked against Essentia's.
fn check_against_essentia(lines: &str) {
    let refs = references();
    let mut seen = std::collections::BTreeMap::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        let name = file_name(v["path"].as_str().expect("path")).to_string();
        *seen.entry(name.clone()).or_insert(0) += 1;
        let r = refs
            .get(&name)
            .unwrap_or_else(|| panic!("{name} is not in the corpus"));
        match (&r.vector, v["vector"].as_array()) {
            (Some(want), Some(got)) => {
                let got: Vec<f32> = got.iter().map(|x| x.as_f64().unwrap() as f32).collect();
                let c = cosine(want, &got);
                assert!(c >= 0.9999, "{name}: cosine {c:.7} to Essentia's");
                println!("{name}: cosine {c:.7}");
            }
            (None, None) => assert!(
                v["error"].as_str().is_some_and(|e| e.contains("too short")),
                "{name}: {v}"
            ),
            _ => panic!("{name}: expected {:?}, got {v}", r.vector.is_some()),
        }
    }
    let want: Vec<_> = refs.keys().cloned().collect();
    let got: Vec<_> = seen.keys().cloned().collect();
    assert_eq!(got, want, "every corpus file");
    assert!(seen.values().all(|n| *n == 1), "each file once: {seen:?}");
}

#[test]
fn embed_gives_essentia_s_vectors() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let refs = references();
    let out = exe()
        .arg("embed")
        .args(refs.keys().map(|f| win(&corpus_dir().join(f))))
        .output()
        .expect("wine runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // One file (the too-short clip) fails, so the exit code says so.
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    check_against_essentia(&String::from_utf8_lossy(&out.stdout));
    assert!(wait_until(Duration::from_secs(30), || wine_children().is_empty()));
}

#[test]
fn ingest_with_a_child_killed_mid_job_does_every_file_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TempDir::new("windows-ingest");
    let out = dir.join("out.jsonl");
    let mut cmd = exe();
    cmd.args(["ingest", "--workers", "2", "--out"])
        .arg(win(&out))
        .arg(win(&corpus_dir()));
    let mut sup = Spawned::spawn(cmd);
    // Both children ready, so both have a job at once (7 files, 2 children), then one is
    // killed as TerminateProcess would.
    assert!(
        wait_until(Duration::from_secs(120), || sup
            .stderr_so_far()
            .matches("child ready")
            .count()
            >= 2),
        "children never started:\n{}",
        sup.stderr_so_far()
    );
    let kids = wine_children();
    assert_eq!(kids.len(), 2, "{kids:?}");
    kill(Pid::from_raw(kids[0] as i32), Signal::SIGKILL).expect("kill a child");
    assert!(wait_until(Duration::from_secs(300), || !sup.running()));
    let (code, _, stderr) = sup.wait();
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    assert!(
        stderr.contains("child died; the job goes to another child"),
        "the kill went unnoticed:\n{stderr}"
    );
    check_against_essentia(&std::fs::read_to_string(&out).expect("the output file"));
    assert!(wait_until(Duration::from_secs(30), || wine_children().is_empty()));
}

#[test]
fn connect_mode_stores_every_job_and_a_killed_supervisor_leaves_no_child() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mock = Mock::start(MockConfig::new(corpus_dir()));
    let refs = references();
    for name in refs.keys() {
        mock.add_audio_job(name);
    }
    let state = TempDir::new("windows-connect");
    let mut cmd = exe();
    cmd.args(["--url", &mock.base_url(), "--code", "TEST42", "--state-dir"])
        .arg(win(state.path()))
        .args(["--workers", "2", "--allow-private-urls"])
        .args(["--pause-when-busy", "off", "--min-free-disk-gb", "0"]);
    let sup = Spawned::spawn(cmd);
    let all = mock.wait_results(refs.len(), Duration::from_secs(300));
    assert!(
        all,
        "only {} of {} results arrived; stderr:\n{}",
        mock.received().len(),
        refs.len(),
        sup.stderr_so_far()
    );
    mock.assert_stored_like_essentia();
    // The control pipe (a named pipe on Windows) answers `status`.
    let out = exe()
        .args(["status", "--json", "--state-dir"])
        .arg(win(state.path()))
        .output()
        .expect("wine runs");
    let st: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{st} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(st["state"].is_string(), "{st}");
    assert!(
        st["tracks_total"].as_u64().is_some_and(|n| n >= 6),
        "every stored track counted: {st}"
    );
    // The supervisor killed outright: its Job Object takes every child with it.
    assert_eq!(wine_children().len(), 2, "{}", sup.stderr_so_far());
    kill(Pid::from_raw(sup.id() as i32), Signal::SIGKILL).expect("kill the supervisor");
    let mut sup = sup;
    assert!(wait_until(Duration::from_secs(30), || !sup.running()));
    let _ = sup.wait();
    assert!(
        wait_until(Duration::from_secs(30), || wine_children().is_empty()),
        "children outlived their supervisor: {:?}",
        wine_children()
    );
}

/// Started with a console of its own, as a double-click in Explorer starts it (wine
/// gives a program on a terminal one, here `script`'s): it says what the window is and
/// how to start it at every logon, asks for the pairing code, and after an error waits
/// for Enter before the window closes, so the error can be read.
#[test]
fn a_double_click_asks_for_the_code_and_keeps_the_window_open_at_the_end() {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let exe = bundle().join("chaarfm-super.exe");
    // `script` runs it on a new terminal (-e: with its exit status).
    let mut term = Command::new("script")
        .args([
            "-qec",
            // Raw first: keys typed before wine sets the terminal up would meet the line
            // discipline, which turns the Enter (a carriage return) into a newline the
            // console ignores (seen once in CI).
            &format!(
                "stty raw -echo; exec wine '{}' --url http://127.0.0.1:9",
                exe.display()
            ),
        ])
        .arg("/dev/null")
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("CHAARFM_MODEL")
        .env_remove("CHAARFM_CODE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux) runs");
    let screen = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut out = term.stdout.take().expect("piped");
    let seen = std::sync::Arc::clone(&screen);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = out.read(&mut chunk) {
            seen.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let shows = |text: &str| {
        let text = text.to_string();
        let screen = std::sync::Arc::clone(&screen);
        wait_until(Duration::from_secs(120), move || {
            String::from_utf8_lossy(&screen.lock().unwrap()).contains(&text)
        })
    };
    let so_far = || String::from_utf8_lossy(&screen.lock().unwrap()).to_string();
    let mut keys = term.stdin.take().expect("piped");
    assert!(
        shows("Pairing code (from the /ingest page):"),
        "{}",
        so_far()
    );
    // A console's Enter is a carriage return.
    keys.write_all(b"bad code!\r").unwrap();
    keys.flush().unwrap();
    assert!(shows("Press Enter to close this window."), "{}", so_far());
    assert!(term.try_wait().unwrap().is_none(), "closed without waiting");
    keys.write_all(b"\r").unwrap();
    keys.flush().unwrap();
    assert!(wait_until(Duration::from_secs(60), || term
        .try_wait()
        .is_ok_and(|s| s.is_some())));
    let status = term.wait().unwrap();
    let text = so_far();
    assert_eq!(status.code(), Some(2), "{text}");
    for line in [
        "It works while this window is open.",
        "setx CHAARFM_CODE YOUR-CODE",
        "(Win+R, shell:startup)",
        "error: the pairing code must be letters, digits, '-' or '_'",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
}

/// `install.ps1` makes the yt-dlp environment without a system Python, with uv: the
/// bundle's copy pins a version and a sha256, and the wheel PyPI serves for that version
/// (fetched by release.sh into `.deps/uv-win_amd64`) has that sha256, and its `uv.exe`
/// runs on Windows and is that version. (PowerShell itself cannot run here: the script's
/// own steps are not executed by any test.)
#[test]
fn the_installers_pinned_uv_is_pypis_and_runs() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let script = std::fs::read_to_string(bundle().join("install.ps1")).expect("install.ps1");
    let pinned = |name: &str| {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("${name} = \"")))
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or_else(|| panic!("${name} not set in install.ps1"))
            .to_string()
    };
    let (version, sha) = (pinned("uvVersion"), pinned("uvSha256"));
    assert!(
        !script.contains("Get-Command python"),
        "install.ps1 still needs a system Python"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/uv-win_amd64");
    let wheel = dir.join(format!("uv-{version}-py3-none-win_amd64.whl"));
    let out = Command::new("sha256sum")
        .arg(&wheel)
        .output()
        .expect("sha256sum");
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        got.split_whitespace().next(),
        Some(sha.as_str()),
        "{}",
        wheel.display()
    );
    let out = Command::new("wine")
        .arg(dir.join("uv.exe"))
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("wine runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&format!("uv {version}")),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
