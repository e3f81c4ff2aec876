//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! Order: `ORT_DYLIB_PATH` (only that, when set), then relative to the executable
//! (`layout::runtime_dirs`: beside it, its `lib/`, its parent). A checkout's cargo sets
//! `ORT_DYLIB_PATH` to what `scripts/setup.sh` unpacked from the PyPI `onnxruntime` wheel
//! (`.cargo/config.toml`); nothing of the build machine is compiled in.

use std::path::PathBuf;
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
    #[error("ONNX Runtime library {path} (from ORT_DYLIB_PATH) does not exist; fix ORT_DYLIB_PATH, or unset it to use the one beside the executable (in a checkout, run scripts/setup.sh)")]
    EnvMissing { path: PathBuf },
    #[error("ONNX Runtime library ({LIB_NAME}) not found; looked in: {looked}. A release bundle has it in lib/ beside the executable: unpack the whole bundle. Else put {LIB_NAME} there, or set ORT_DYLIB_PATH to its path (a checkout: run scripts/setup.sh and use cargo run, or scripts/run.sh)")]
    NotFound { looked: String },
    #[error("cannot load ONNX Runtime from {path}: {message}{}", LOAD_HINT)]
    Load { path: PathBuf, message: String },
}

/// What usually stops the library loading, per platform.
const LOAD_HINT: &str = if cfg!(windows) {
    " (onnxruntime.dll needs the Microsoft Visual C++ Redistributable 2015-2022, x64: install it)"
} else {
    ""
};

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
    let dirs = crate::layout::exe_dir()
        .map(|d| crate::layout::runtime_dirs(&d))
        .unwrap_or_default();
    crate::layout::first_file(&dirs, LIB_NAME).map_err(|looked| RuntimeError::NotFound { looked })
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

/// The loaded runtime's version (`1.32.0`); `None` when it cannot be loaded.
pub fn version() -> Option<String> {
    environment().ok()?;
    let path = locate().ok()?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `path` is the ONNX Runtime library ort has just loaded, so this opens a second
    // reference to the same image. `OrtGetApiBase` takes nothing and returns a pointer to
    // a static table; its `GetVersionString` returns a static NUL-terminated string. ort
    // makes the same calls when it loads the library.
    unsafe {
        let lib = libloading::Library::new(&path).ok()?;
        let get: libloading::Symbol<GetApiBase> = lib.get(b"OrtGetApiBase").ok()?;
        let base = get();
        if base.is_null() {
            return None;
        }
        let s = ((*base).GetVersionString)();
        if s.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned())
    }
}
