//! A fake `yt-dlp` the tests control (nothing here reaches YouTube): a shell script in
//! the `bin` of a fake venv, as the worker's private one is. What it answers is chosen by
//! files beside it, so a test can change it while the worker runs:
//! - `mode`: `ok` ("downloads" the clip to the `-o` template and prints yt-dlp's JSON),
//!   `slow:N` (first writes a `.part` file in N steps of 0.2 s), `silent:N` (prints and
//!   writes nothing for the first N calls of a video, then `ok`), `gate` (waits until
//!   [`FakeYtDlp::open_gate`], then `ok`), or an error line to
//!   print, exit 1 (`@ID@` becomes the video id: yt-dlp's real messages);
//! - `mode-<id>` overrides it for one video;
//! - `version` is what `--version` prints.
//!
//! It logs each call's arguments to `calls.log`, its pid to `pids` and a line per call to
//! `calls-<id>`, and on SIGINT says what yt-dlp says ("ERROR: Interrupted by user").
#![cfg(unix)]

use std::path::{Path, PathBuf};

pub struct FakeYtDlp {
    pub dir: PathBuf,
}

impl FakeYtDlp {
    /// The fake in `dir` (created), "downloading" `clip`; `dir`'s parent becomes a venv.
    pub fn new(dir: &Path, clip: &Path) -> FakeYtDlp {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).expect("fake yt-dlp dir");
        let script = format!(
            r#"#!/bin/sh
dir='{dir}'
if [ "$1" = --version ]; then cat "$dir/version"; exit 0; fi
echo "$@" >> "$dir/calls.log"
echo $$ >> "$dir/pids"
tmpl=''; target=''
while [ $# -gt 0 ]; do
  case "$1" in
    -o) tmpl="$2"; shift 2 ;;
    --) target="$2"; shift; shift ;;
    *) shift ;;
  esac
done
id=$(printf '%s' "$target" | sed 's/.*v=//')
echo x >> "$dir/calls-$id"
mode=$(cat "$dir/mode")
[ -f "$dir/mode-$id" ] && mode=$(cat "$dir/mode-$id")
trap 'echo "ERROR: Interrupted by user" >&2; exit 1' INT
dest=$(printf '%s' "$tmpl" | sed 's/%(ext)s/wav/')
case "$mode" in
  ok) ;;
  gate) while [ ! -f "$dir/open" ]; do sleep 0.1; done ;;
  silent:*)
    if [ "$(wc -l < "$dir/calls-$id")" -le "${{mode#silent:}}" ]; then sleep 600; exit 1; fi ;;
  slow:*)
    i=0
    while [ "$i" -lt "${{mode#slow:}}" ]; do
      head -c 4096 /dev/zero >> "$dest.part"; sleep 0.2; i=$((i+1))
    done
    rm -f "$dest.part" ;;
  *)
    printf '%s\n' "$mode" | sed "s/@ID@/$id/" >&2
    exit 1 ;;
esac
cp '{clip}' "$dest"
printf '{{"id": "%s", "title": "t %s", "webpage_url": "%s", "requested_downloads": [{{"filepath": "%s"}}]}}\n' "$id" "$id" "$target" "$dest"
"#,
            dir = dir.display(),
            clip = clip.display()
        );
        let bin = dir.join("yt-dlp");
        std::fs::write(&bin, script).expect("write the fake yt-dlp");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
            .expect("make the fake yt-dlp executable");
        std::fs::write(dir.join("version"), "2024.01.01").expect("write its version");
        if let Some(venv) = dir.parent() {
            std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").expect("pyvenv.cfg");
        }
        let f = FakeYtDlp {
            dir: dir.to_path_buf(),
        };
        f.answer("ok");
        f
    }

    /// The fake in `<dir>/venv/bin`, "downloading" a clip of the corpus made there.
    pub fn in_venv(dir: &Path) -> FakeYtDlp {
        let venv = dir.join("venv");
        std::fs::create_dir_all(&venv).expect("fake venv");
        let clips = crate::make_clips(&venv, 1);
        FakeYtDlp::new(&venv.join("bin"), &clips[0])
    }

    /// The executable.
    pub fn path(&self) -> PathBuf {
        self.dir.join("yt-dlp")
    }

    /// A fake `python3` beside it, whose `-m pip install --upgrade` is recorded and
    /// "updates" yt-dlp: its version changes and it answers `ok` from then on.
    pub fn with_pip(&self) {
        use std::os::unix::fs::PermissionsExt;
        let script = format!(
            "#!/bin/sh\necho \"$@\" >> '{d}/pip.log'\necho ok > '{d}/.mode.pip' && mv '{d}/.mode.pip' '{d}/mode'\necho 2026.12.01 > '{d}/.version.pip' && mv '{d}/.version.pip' '{d}/version'\n",
            d = self.dir.display()
        );
        let bin = self.dir.join("python3");
        std::fs::write(&bin, script).expect("write the fake python3");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
            .expect("make the fake python3 executable");
    }

    /// Writes one of the fake's control files whole, by a rename: a call reading it as it
    /// changes gets the old or the new text, never an empty file (which it would take for
    /// an error line and fail the job with "no output": seen once in two suite runs).
    fn put(&self, name: &str, text: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write the fake's control file");
        std::fs::rename(&tmp, self.dir.join(name)).expect("replace the fake's control file");
    }

    /// From now on, every call answers `mode`.
    pub fn answer(&self, mode: &str) {
        self.put("mode", mode);
    }

    /// Lets every download waiting in `gate` mode (and every later one) through.
    pub fn open_gate(&self) {
        std::fs::write(self.dir.join("open"), "").expect("open the fake's gate");
    }

    /// Video `id` answers `mode`.
    pub fn answer_for(&self, id: &str, mode: &str) {
        self.put(&format!("mode-{id}"), mode);
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    pub fn pip_calls(&self) -> Vec<String> {
        self.read("pip.log").lines().map(str::to_string).collect()
    }

    /// Every call's arguments, one line each.
    pub fn call_log(&self) -> String {
        self.read("calls.log")
    }

    pub fn calls(&self) -> usize {
        self.call_log().lines().count()
    }

    /// Calls for video `id`.
    pub fn calls_for(&self, id: &str) -> usize {
        self.read(&format!("calls-{id}")).lines().count()
    }

    /// Pids of every download run so far.
    pub fn pids(&self) -> Vec<u32> {
        self.read("pids")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}
