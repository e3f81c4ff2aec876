//! Where a release bundle keeps its parts, relative to the executable, so an unpacked
//! bundle runs from anywhere with an empty environment and no path of the build machine
//! is baked into a lookup:
//!
//! ```text
//! chaarfm-super            the executable
//! lib/libonnxruntime.so    ONNX Runtime (.dylib on macOS; onnxruntime.dll beside the .exe)
//! models/msd-musicnn-1.onnx
//! tools/bin/yt-dlp, deno   private venv made by install.sh (tools\Scripts on Windows)
//! ```
//!
//! A checkout's `cargo run/test/bench` get the same parts through `.cargo/config.toml`
//! (`ORT_DYLIB_PATH`, `CHAARFM_MODEL`, `CHAARFM_YTDLP`), set for the processes cargo
//! starts, not compiled in.

use std::path::{Path, PathBuf};

/// The directory of the running executable, symlinks resolved (a bundle linked into
/// `~/.local/bin` still finds its parts).
pub fn exe_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    exe.parent().map(Path::to_path_buf)
}

/// Where the ONNX Runtime library may be, in order: beside the executable, its `lib/`,
/// and the parent directory (test binaries live in `target/*/deps`).
pub fn runtime_dirs(exe_dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![exe_dir.to_path_buf(), exe_dir.join("lib")];
    dirs.extend(exe_dir.parent().map(Path::to_path_buf));
    dirs
}

/// The bundle's model directory.
pub fn model_dir(exe_dir: &Path) -> PathBuf {
    exe_dir.join("models")
}

/// The bundle's private venv's executables (yt-dlp, deno).
pub fn tools_bin(exe_dir: &Path) -> PathBuf {
    exe_dir
        .join("tools")
        .join(if cfg!(windows) { "Scripts" } else { "bin" })
}

/// `name` with the platform's executable suffix.
pub fn exe_name(name: &str) -> String {
    format!("{name}{}", std::env::consts::EXE_SUFFIX)
}

/// The first `dir/name` that is a file, with every directory looked in (for errors).
pub fn first_file(dirs: &[PathBuf], name: &str) -> Result<PathBuf, String> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
}

/// `name` on `PATH`, if there.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(exe_name(name)))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_searched_beside_the_executable_only() {
        let dir = Path::new("/opt/chaarfm-super-0.1.0");
        assert_eq!(
            runtime_dirs(dir),
            vec![dir.to_path_buf(), dir.join("lib"), PathBuf::from("/opt"),]
        );
        assert_eq!(model_dir(dir), dir.join("models"));
        assert!(tools_bin(dir).starts_with(dir.join("tools")));
    }

    #[test]
    fn first_file_names_every_place_it_looked() {
        let tmp = std::env::temp_dir().join(format!("layout-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("b")).unwrap();
        std::fs::write(tmp.join("b/x"), b"").unwrap();
        let dirs = vec![tmp.join("a"), tmp.join("b")];
        assert_eq!(first_file(&dirs, "x").unwrap(), tmp.join("b/x"));
        let e = first_file(&dirs, "y").unwrap_err();
        assert!(e.contains(&tmp.join("a").display().to_string()) && e.contains(", "));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
