//! The model manifest (`models/msd-musicnn-1.json`, compiled in) and where the model file
//! is found: `--model PATH`, then `CHAARFM_MODEL`, then `models/` beside the executable
//! (a release bundle), then the user cache directory (`models/fetch.sh`). A checkout's
//! cargo sets `CHAARFM_MODEL` to `../shared/models` (`.cargo/config.toml`). The file's
//! sha256 is checked before use.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The manifest, compiled into the binary so the expected hash travels with the code.
const MANIFEST_JSON: &str = include_str!("../../models/msd-musicnn-1.json");

/// What the code needs to know about the model file.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub file: String,
    pub sha256: String,
    pub licence: String,
    pub input: String,
    pub embedding_output: String,
    pub tags_output: String,
    pub sample_rate: u32,
    pub patch_frames: usize,
    pub patch_hop: usize,
    pub bands: usize,
    pub embedding_dim: usize,
    pub shared: SharedCut,
    pub tags: Vec<String>,
    pub probe: Probe,
}

/// Where the shared engine cuts the model (`graph::extract`, MUSICNN.md section 8).
#[derive(Debug, Clone, Deserialize)]
pub struct SharedCut {
    /// The reshaped input before its batch norm, `[batch, 1, time, bands]`.
    pub raw: String,
    /// The two timbral branches after their max over frequency, `[batch, channels, time]`.
    pub timbral: [String; 2],
    /// The reshape that pins time to 187 frames in the front-end.
    pub pinned_reshape: String,
    /// The two timbral convolutions, whose time padding the front-end's variants set
    /// (`graph::with_time_pads`).
    pub timbral_convs: [String; 2],
    pub channels: usize,
    /// Frames each side a timbral output depends on (kernel 7: 3).
    pub halo: usize,
    /// A convolution run as 1-D in the rest (`graph::conv_as_1d`), if any.
    #[serde(default)]
    pub conv_1d: Option<ConvAs1d>,
    /// Convolutions whose `Relu -> BatchNormalization -> MaxPool` branch runs pool first
    /// (`graph::pool_first`).
    #[serde(default)]
    pub pool_first: Vec<String>,
    /// One-channel time convolutions among `pool_first` whose filters past a whole
    /// channel block may fill another's padding (`graph::pack_spare_filters`).
    #[serde(default)]
    pub pack_spare: Vec<String>,
    /// Output frames per Winograd tile of the interior front-end's `timbral_convs`
    /// (`graph::Model::winograd_time`); 0 or 1: direct convolutions.
    #[serde(default)]
    pub winograd_tile: usize,
}

/// See [`crate::graph::Conv1d`].
#[derive(Debug, Clone, Deserialize)]
pub struct ConvAs1d {
    pub conv: String,
    pub source: String,
}

/// A fixed input and the published conversion's output for it: how a model whose bytes
/// differ (tf2onnx output is not byte-reproducible, see models/README.md) is recognised.
#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    pub embedding: Vec<f32>,
}

/// The probe's input: one patch, `value[i] = ((i * 7919) % 1000) / 250`.
pub fn probe_input() -> Vec<f32> {
    (0..crate::features::PATCH_LEN)
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0)
        .collect()
}

/// Whether an embedding of [`probe_input`] is the published model's (max abs error 1e-3).
pub fn probe_matches(embedding: &[f32]) -> bool {
    let want = &manifest().probe.embedding;
    embedding.len() == want.len()
        && embedding
            .iter()
            .zip(want)
            .all(|(a, b)| (a - b).abs() <= 1e-3)
}

/// The compiled-in manifest.
pub fn manifest() -> &'static Manifest {
    static M: OnceLock<Manifest> = OnceLock::new();
    // The JSON is part of the source tree and checked by a unit test, so this cannot fail
    // for a built binary.
    M.get_or_init(|| {
        serde_json::from_str(MANIFEST_JSON).expect("models/msd-musicnn-1.json is valid")
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {path} does not exist ({origin}); fix the path, or see models/README.md to fetch or convert the model")]
    Missing { path: PathBuf, origin: &'static str },
    #[error("no model file {file} found; looked in: {looked}. Pass --model PATH, set CHAARFM_MODEL, or see models/README.md to fetch or convert it")]
    NotFound { file: String, looked: String },
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} has sha256 {actual}, expected {expected}, and does not compute the published model's values: it is corrupt or a different model; fetch it again (models/README.md)")]
    Hash {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// The user cache directory for models (`$XDG_CACHE_HOME` or `~/.cache` on Linux,
/// `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on Windows) + `chaarfm-super/models`.
pub fn user_model_dir() -> Option<PathBuf> {
    let base = if cfg!(windows) {
        std::env::var_os("LOCALAPPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join("Library/Caches"))
    } else {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
    };
    base.map(|b| b.join("chaarfm-super").join("models"))
}

/// Finds the model file. An explicit path (`--model`, `CHAARFM_MODEL`) must exist; it
/// never falls through to another location.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, ModelError> {
    if let Some(p) = explicit {
        return existing(p, "given with --model");
    }
    if let Some(p) = std::env::var_os("CHAARFM_MODEL").filter(|v| !v.is_empty()) {
        return existing(Path::new(&p), "given by CHAARFM_MODEL");
    }
    let file = &manifest().file;
    let dirs: Vec<PathBuf> = crate::layout::exe_dir()
        .map(|d| crate::layout::model_dir(&d))
        .into_iter()
        .chain(user_model_dir())
        .collect();
    crate::layout::first_file(&dirs, file).map_err(|looked| ModelError::NotFound {
        file: file.clone(),
        looked,
    })
}

fn existing(p: &Path, origin: &'static str) -> Result<PathBuf, ModelError> {
    if p.is_file() {
        Ok(p.to_path_buf())
    } else {
        Err(ModelError::Missing {
            path: p.to_path_buf(),
            origin,
        })
    }
}

/// A model file read from disk, with whether its bytes are the published conversion's.
pub struct ModelBytes {
    pub bytes: Vec<u8>,
    pub sha256: String,
    /// `false`: the caller must check the model with [`probe_matches`] before use.
    pub hash_matches: bool,
}

/// Reads the model and compares its sha256 with the manifest's.
pub fn read(path: &Path) -> Result<ModelBytes, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = sha256_hex(&bytes);
    let hash_matches = sha256 == manifest().sha256;
    Ok(ModelBytes {
        bytes,
        sha256,
        hash_matches,
    })
}

/// The error for a model that is neither the published file nor computes its values.
pub fn hash_error(path: &Path, actual: &str) -> ModelError {
    ModelError::Hash {
        path: path.to_path_buf(),
        expected: manifest().sha256.clone(),
        actual: actual.to_string(),
    }
}

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_matches_the_feature_geometry() {
        let m = manifest();
        assert_eq!(m.patch_frames, crate::features::PATCH_FRAMES);
        assert_eq!(m.patch_hop, crate::features::PATCH_HOP);
        assert_eq!(m.bands, crate::features::BANDS);
        assert_eq!(m.sample_rate, crate::features::SAMPLE_RATE);
        assert_eq!(m.embedding_dim, 200);
        assert_eq!(m.tags.len(), 50);
        assert_eq!(m.sha256.len(), 64);
    }

    #[test]
    fn a_wrong_file_is_refused_with_path_and_expected_hash() {
        let dir = std::env::temp_dir().join(format!("chaarfm-model-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("fake.onnx");
        std::fs::write(&p, b"not a model").unwrap();
        let m = read(&p).unwrap();
        assert!(!m.hash_matches);
        let err = hash_error(&p, &m.sha256).to_string();
        assert!(err.contains("fake.onnx"), "{err}");
        assert!(err.contains(&manifest().sha256), "{err}");
        let missing = resolve(Some(&dir.join("nope.onnx")))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("nope.onnx") && missing.contains("--model"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
