//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! Order: `ORT_DYLIB_PATH` (only that, when set), then next to the executable (and its
//! parent, for test binaries in `target/*/deps`), then this project's setup location
//! `.deps/onnxruntime/`, which `scripts/setup.sh` fills from the PyPI `onnxruntime` wheel.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// File name of the runtime library on this platform.
pub const LIB_NAME: &str = if cfg!(windows) {
    "onnxruntime.dll"
} else if cfg!(target_os = "macos") {
    "libonnxruntime.dylib"
} else {
    "libonnxruntime.so"
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library {path} (from ORT_DYLIB_PATH) does not exist; fix ORT_DYLIB_PATH or unset it to use the one scripts/setup.sh installs")]
    EnvMissing { path: PathBuf },
    #[error("ONNX Runtime library ({LIB_NAME}) not found; looked in: {looked}. Run scripts/setup.sh (it unpacks the onnxruntime wheel from PyPI into .deps/onnxruntime), put {LIB_NAME} next to the chaarfm-super executable, or set ORT_DYLIB_PATH to its path")]
    NotFound { looked: String },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// Where this checkout's setup script puts the library.
pub fn setup_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/onnxruntime")
}

/// Finds the runtime library without loading it.
pub fn locate() -> Result<PathBuf, RuntimeError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RuntimeError::EnvMissing { path: p })
        };
    }
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            dirs.push(dir.to_path_buf());
            dirs.extend(dir.parent().map(Path::to_path_buf));
        }
    }
    dirs.push(setup_dir());
    for d in &dirs {
        let p = d.join(LIB_NAME);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(RuntimeError::NotFound {
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The process-wide ONNX Runtime environment, loaded once.
pub fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    static ENV: OnceLock<Result<ort::environment::Environment, RuntimeError>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = locate()?;
        let load = |message: String| RuntimeError::Load {
            path: path.clone(),
            message,
        };
        let builder = ort::init_from(&path).map_err(|e| load(e.to_string()))?;
        let env = builder
            .with_name("chaarfm-super")
            .build()
            .map_err(|e| load(e.to_string()))?;
        tracing::debug!(path = %path.display(), "ONNX Runtime loaded");
        Ok(env)
    })
    .as_ref()
    .map_err(Clone::clone)
}
