//! MusiCNN inference with ONNX Runtime: patches in bounded batches, mean over patches.

use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::features::{MelSpectrogram, BANDS, PATCH_FRAMES, PATCH_LEN};
use crate::model::{self, manifest, ModelError};
use crate::runtime::{self, RuntimeError};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Device {
    Cpu,
    /// A CUDA GPU by index (needs the `cuda` feature and a CUDA-enabled runtime library).
    Cuda(u32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// How a model session is set up.
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// ONNX Runtime intra-op threads (one per child by default: children are the parallelism).
    pub threads: usize,
    /// Patches per inference call; bounds activation memory. 1 is fastest on CPU here
    /// (measured: 32.0 ms/patch at 1, 33.5 at 8, 45 at 32); GPUs want larger batches.
    pub batch: usize,
    pub device: Device,
}

impl Default for InferOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            batch: 1,
            device: Device::Cpu,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("ONNX Runtime cannot load the model {path}: {message}")]
    Session { path: String, message: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("the model produced a non-finite value (NaN or infinity)")]
    NonFinite,
    #[error("CUDA was requested but this build has no CUDA support (build with --features cuda)")]
    NoCuda,
}

/// The mean outputs of one track.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Mean embedding, 200 floats.
    pub vector: Vec<f32>,
    /// Mean MSD tag activations, 50 floats in manifest order.
    pub tags: Vec<f32>,
    pub patches: usize,
}

/// A loaded MusiCNN session.
pub struct Musicnn {
    session: Session,
    batch: usize,
    buf: Vec<f32>,
    model_sha256: String,
    device: Device,
}

impl Musicnn {
    /// Loads and verifies the model at `path`, then builds an ONNX Runtime session.
    pub fn load(path: &Path, opts: &InferOptions) -> Result<Self, InferError> {
        let file = model::read(path)?;
        let env = runtime::environment()?;
        let err = |e: ort::Error| InferError::Session {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(env)
            .map_err(err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| err(e.into()))?
            .with_intra_threads(opts.threads.max(1))
            .map_err(|e| err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| err(e.into()))?;
        if let Device::Cuda(id) = opts.device {
            builder = with_cuda(builder, id).map_err(|e| match e {
                InferError::Session { message, .. } => InferError::Session {
                    path: path.display().to_string(),
                    message,
                },
                other => other,
            })?;
        }
        // A file that is not even an ONNX model is "corrupt", not a runtime problem.
        let session = match builder.commit_from_memory(&file.bytes) {
            Ok(s) => s,
            Err(_) if !file.hash_matches => {
                return Err(model::hash_error(path, &file.sha256).into())
            }
            Err(e) => return Err(err(e)),
        };
        let batch = opts.batch.max(1);
        let mut me = Self {
            session,
            batch,
            buf: Vec::with_capacity(batch * PATCH_LEN),
            model_sha256: file.sha256,
            device: opts.device,
        };
        if !file.hash_matches {
            let probe = me.run_batch(&model::probe_input(), 1).map(|(emb, _)| emb);
            match probe {
                Ok(emb) if model::probe_matches(&emb) => tracing::info!(
                    path = %path.display(),
                    "model bytes differ from the published conversion but compute the same values; using it"
                ),
                _ => return Err(model::hash_error(path, &me.model_sha256).into()),
            }
        }
        Ok(me)
    }

    /// Runs `n` patches laid out in `patches`; returns the embeddings and tag activations.
    fn run_batch(&mut self, patches: &[f32], n: usize) -> Result<(Vec<f32>, Vec<f32>), InferError> {
        let m = manifest();
        let input = TensorRef::from_array_view(([n, PATCH_FRAMES, BANDS], patches))
            .map_err(|e| InferError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![m.input.as_str() => input])
            .map_err(|e| InferError::Run(e.to_string()))?;
        let extract = |name: &str, width: usize| -> Result<Vec<f32>, InferError> {
            let (_, data) = outputs[name]
                .try_extract_tensor::<f32>()
                .map_err(|e| InferError::Run(format!("output {name}: {e}")))?;
            if data.len() != n * width {
                return Err(InferError::Run(format!(
                    "output {name} has {} values, expected {}",
                    data.len(),
                    n * width
                )));
            }
            Ok(data.to_vec())
        };
        let emb = extract(&m.embedding_output, m.embedding_dim)?;
        let tags = extract(&m.tags_output, m.tags.len())?;
        Ok((emb, tags))
    }

    /// sha256 of the loaded model file.
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }

    /// The device the session runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs every whole patch of `mel` and averages the outputs.
    pub fn predict(&mut self, mel: &MelSpectrogram) -> Result<Prediction, InferError> {
        let m = manifest();
        let patches = mel.patches();
        let mut emb_sum = vec![0f64; m.embedding_dim];
        let mut tag_sum = vec![0f64; m.tags.len()];
        let mut p = 0;
        let mut buf = std::mem::take(&mut self.buf);
        while p < patches {
            let n = self.batch.min(patches - p);
            buf.clear();
            for q in p..p + n {
                buf.extend_from_slice(mel.patch(q));
            }
            let (emb, tags) = self.run_batch(&buf, n)?;
            for (data, sum) in [(&emb, &mut emb_sum), (&tags, &mut tag_sum)] {
                let width = sum.len();
                for row in data.chunks_exact(width) {
                    for (s, &v) in sum.iter_mut().zip(row) {
                        *s += f64::from(v);
                    }
                }
            }
            p += n;
        }
        self.buf = buf;
        let mean = |sum: Vec<f64>| -> Vec<f32> {
            sum.into_iter()
                .map(|s| (s / patches.max(1) as f64) as f32)
                .collect()
        };
        let vector = mean(emb_sum);
        if vector.iter().any(|v| !v.is_finite()) {
            return Err(InferError::NonFinite);
        }
        Ok(Prediction {
            vector,
            tags: mean(tag_sum),
            patches,
        })
    }
}

#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
    id: u32,
) -> Result<ort::session::builder::SessionBuilder, InferError> {
    let ep = ort::ep::CUDA::default()
        .with_device_id(id as i32)
        .build()
        .error_on_failure();
    builder
        .with_execution_providers([ep])
        .map_err(|e| InferError::Session {
            path: String::new(),
            message: format!("CUDA execution provider unavailable: {e}"),
        })
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _builder: ort::session::builder::SessionBuilder,
    _id: u32,
) -> Result<ort::session::builder::SessionBuilder, InferError> {
    Err(InferError::NoCuda)
}
