//! MusiCNN inference with ONNX Runtime: patches in bounded batches, mean over patches.

use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::features::{MelSpectrogram, BANDS, PATCH_FRAMES, PATCH_HOP, PATCH_LEN};
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
    pub engine: Engine,
}

impl Default for InferOptions {
    fn default() -> Self {
        Self {
            threads: 1,
            batch: 1,
            device: Device::Cpu,
            engine: Engine::Shared,
        }
    }
}

/// How the model is run. Both give the same vector (max abs difference ~1e-6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Engine {
    /// The whole model on every patch, as Essentia runs it.
    Patch,
    /// The timbral front-end once per track, the rest per patch (MUSICNN.md section 8):
    /// ~1.5x faster on CPU.
    #[default]
    Shared,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Patch => "patch",
            Engine::Shared => "shared",
        })
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "patch" => Ok(Engine::Patch),
            "shared" => Ok(Engine::Shared),
            _ => Err(format!("unknown engine {s:?}: use patch or shared")),
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
    #[error("cannot derive the shared engine's graphs from {path}: {source} (use --engine patch)")]
    Split {
        path: String,
        #[source]
        source: crate::graph::GraphError,
    },
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

/// The sessions of one engine.
enum Sessions {
    Patch(Session),
    Shared { front: Session, rest: Session },
}

/// A loaded MusiCNN model.
pub struct Musicnn {
    sessions: Sessions,
    batch: usize,
    buf: Vec<f32>,
    model_sha256: String,
    device: Device,
}

/// Frames of new timbral output the shared engine computes per front-end call. Measured
/// (embed bench): at 512 a child peaks at 170-180 MB (210 MB on a 30-minute file), at
/// 128 at the per-patch engine's 90-100 MB (134 MB) and no slower (the 6 halo frames cost
/// 5%, smaller activations stay in cache); a whole track at once takes 2 GiB.
const FRONT_CHUNK: usize = 128;

impl Musicnn {
    /// Loads and verifies the model at `path`, then builds the engine's sessions.
    pub fn load(path: &Path, opts: &InferOptions) -> Result<Self, InferError> {
        let file = model::read(path)?;
        let env = runtime::environment()?;
        let shown = path.display().to_string();
        let session = |bytes: &[u8]| -> Result<Session, InferError> {
            let err = |e: ort::Error| InferError::Session {
                path: shown.clone(),
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
                        path: shown.clone(),
                        message,
                    },
                    other => other,
                })?;
            }
            builder.commit_from_memory(bytes).map_err(err)
        };
        // A file that is not even an ONNX model is "corrupt", not a runtime problem.
        let corrupt = |e: InferError| -> InferError {
            if file.hash_matches {
                e
            } else {
                model::hash_error(path, &file.sha256).into()
            }
        };
        let sessions = match opts.engine {
            Engine::Patch => Sessions::Patch(session(&file.bytes).map_err(corrupt)?),
            Engine::Shared => {
                let split_err = |source| {
                    corrupt(InferError::Split {
                        path: shown.clone(),
                        source,
                    })
                };
                let (front, rest) = cuts();
                let front = crate::graph::extract(&file.bytes, &front).map_err(split_err)?;
                let rewritten = match &manifest().shared.conv_1d {
                    Some(c) => {
                        let rw = crate::graph::Conv1d {
                            conv: c.conv.clone(),
                            source: c.source.clone(),
                        };
                        std::borrow::Cow::Owned(
                            crate::graph::conv_as_1d(&file.bytes, &rw).map_err(split_err)?,
                        )
                    }
                    None => std::borrow::Cow::Borrowed(&file.bytes[..]),
                };
                let rest = crate::graph::extract(&rewritten, &rest).map_err(split_err)?;
                Sessions::Shared {
                    front: session(&front).map_err(corrupt)?,
                    rest: session(&rest).map_err(corrupt)?,
                }
            }
        };
        let batch = opts.batch.max(1);
        let mut me = Self {
            sessions,
            batch,
            buf: Vec::with_capacity(batch * PATCH_LEN),
            model_sha256: file.sha256,
            device: opts.device,
        };
        if !file.hash_matches {
            let probe = MelSpectrogram {
                data: model::probe_input(),
                frames: PATCH_FRAMES,
                samples: 0,
            };
            match me.predict(&probe) {
                Ok(p) if model::probe_matches(&p.vector) => tracing::info!(
                    path = %path.display(),
                    "model bytes differ from the published conversion but compute the same values; using it"
                ),
                _ => return Err(model::hash_error(path, &me.model_sha256).into()),
            }
        }
        Ok(me)
    }

    /// sha256 of the loaded model file.
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }

    /// The device the session runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The engine the sessions were built for.
    pub fn engine(&self) -> Engine {
        match self.sessions {
            Sessions::Patch(_) => Engine::Patch,
            Sessions::Shared { .. } => Engine::Shared,
        }
    }

    /// Runs every whole patch of `mel` and averages the outputs.
    pub fn predict(&mut self, mel: &MelSpectrogram) -> Result<Prediction, InferError> {
        let m = manifest();
        let patches = mel.patches();
        let mut sums = Sums {
            emb: vec![0f64; m.embedding_dim],
            tags: vec![0f64; m.tags.len()],
        };
        match &mut self.sessions {
            Sessions::Patch(session) => {
                let mut buf = std::mem::take(&mut self.buf);
                let mut p = 0;
                while p < patches {
                    let n = self.batch.min(patches - p);
                    buf.clear();
                    for q in p..p + n {
                        buf.extend_from_slice(mel.patch(q));
                    }
                    let input = tensor(&[n, PATCH_FRAMES, BANDS], &buf)?;
                    let outputs = session
                        .run(ort::inputs![m.input.as_str() => input])
                        .map_err(run_error)?;
                    sums.add(&outputs, n)?;
                    p += n;
                }
                self.buf = buf;
            }
            Sessions::Shared { front, rest } => {
                shared_pass(front, rest, mel, self.batch, &mut sums)?;
            }
        }
        let mean = |sum: Vec<f64>| -> Vec<f32> {
            sum.into_iter()
                .map(|s| (s / patches.max(1) as f64) as f32)
                .collect()
        };
        let vector = mean(sums.emb);
        if vector.iter().any(|v| !v.is_finite()) {
            return Err(InferError::NonFinite);
        }
        Ok(Prediction {
            vector,
            tags: mean(sums.tags),
            patches,
        })
    }
}

/// The two cuts of the shared engine: the timbral front-end with a free time axis, and
/// the per-patch rest fed the patch and its timbral features.
fn cuts() -> (crate::graph::Cut, crate::graph::Cut) {
    use crate::graph::{Cut, Dim, Port};
    let m = manifest();
    let c = &m.shared;
    let raw = |t: Dim| Port {
        name: c.raw.clone(),
        dims: vec![
            Dim::Free("batch"),
            Dim::Fixed(1),
            t,
            Dim::Fixed(BANDS as i64),
        ],
    };
    let timbral = |t: Dim| -> Vec<Port> {
        c.timbral
            .iter()
            .map(|name| Port {
                name: name.clone(),
                dims: vec![Dim::Free("batch"), Dim::Fixed(c.channels as i64), t.clone()],
            })
            .collect()
    };
    let front = Cut {
        inputs: vec![raw(Dim::Free("time"))],
        outputs: timbral(Dim::Free("time")),
        pass_through: vec![c.pinned_reshape.clone()],
    };
    let patch = Dim::Fixed(PATCH_FRAMES as i64);
    let mut inputs = vec![raw(patch.clone())];
    inputs.extend(timbral(patch));
    let rest = Cut {
        inputs,
        outputs: vec![
            Port {
                name: m.embedding_output.clone(),
                dims: vec![Dim::Free("batch"), Dim::Fixed(m.embedding_dim as i64)],
            },
            Port {
                name: m.tags_output.clone(),
                dims: vec![Dim::Free("batch"), Dim::Fixed(m.tags.len() as i64)],
            },
        ],
        pass_through: vec![],
    };
    (front, rest)
}

fn run_error(e: ort::Error) -> InferError {
    InferError::Run(e.to_string())
}

fn tensor<'a>(shape: &[usize], data: &'a [f32]) -> Result<TensorRef<'a, f32>, InferError> {
    TensorRef::from_array_view((shape.to_vec(), data)).map_err(run_error)
}

/// Running sums of the outputs over patches.
struct Sums {
    emb: Vec<f64>,
    tags: Vec<f64>,
}

impl Sums {
    fn add(&mut self, outputs: &ort::session::SessionOutputs, n: usize) -> Result<(), InferError> {
        let m = manifest();
        for (name, sum) in [
            (&m.embedding_output, &mut self.emb),
            (&m.tags_output, &mut self.tags),
        ] {
            let width = sum.len();
            let data = extract(outputs, name, n * width)?;
            for row in data.chunks_exact(width) {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += f64::from(v);
                }
            }
        }
        Ok(())
    }
}

fn extract<'a>(
    outputs: &'a ort::session::SessionOutputs,
    name: &str,
    len: usize,
) -> Result<&'a [f32], InferError> {
    let (_, data) = outputs[name]
        .try_extract_tensor::<f32>()
        .map_err(|e| InferError::Run(format!("output {name}: {e}")))?;
    if data.len() != len {
        return Err(InferError::Run(format!(
            "output {name} has {} values, expected {len}",
            data.len()
        )));
    }
    Ok(data)
}

/// Runs the front-end on `frames` consecutive mel frames of each of `n` inputs laid out
/// in `raw`; returns the two branches, each `[n, channels, frames]`.
fn front_run(
    front: &mut Session,
    raw: &[f32],
    n: usize,
    frames: usize,
) -> Result<[Vec<f32>; 2], InferError> {
    let c = &manifest().shared;
    let input = tensor(&[n, 1, frames, BANDS], raw)?;
    let outputs = front
        .run(ort::inputs![c.raw.as_str() => input])
        .map_err(run_error)?;
    let len = n * c.channels * frames;
    Ok([
        extract(&outputs, &c.timbral[0], len)?.to_vec(),
        extract(&outputs, &c.timbral[1], len)?.to_vec(),
    ])
}

/// The shared engine (`infer::shared_pass`): the timbral front-end runs over the track
/// in chunks of [`FRONT_CHUNK`] frames (with a halo each side, so chunk borders are
/// exact), kept only as long as a patch still needs them; each patch's first and last
/// `halo` frames are recomputed from the patch alone, as the whole model sees them (its
/// convolutions pad the patch's edges); the rest of the model runs per patch.
fn shared_pass(
    front: &mut Session,
    rest: &mut Session,
    mel: &MelSpectrogram,
    batch: usize,
    sums: &mut Sums,
) -> Result<(), InferError> {
    let m = manifest();
    let (ch, halo) = (m.shared.channels, m.shared.halo);
    let edge = 2 * halo;
    let (frames, patches) = (mel.frames, mel.patches());
    // Timbral outputs held, frame-major `[frame][channel]`, from frame `base`.
    let mut held: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
    let (mut base, mut ready) = (0usize, 0usize);
    let mut edges_in = Vec::new();
    let mut timbral: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
    let mut raw = Vec::new();
    let mut p = 0;
    while p < patches {
        let n = batch.min(patches - p);
        let need = (p + n - 1) * PATCH_HOP + PATCH_FRAMES;
        while ready < need {
            let end = (ready + FRONT_CHUNK).min(frames);
            let (lo, hi) = (ready.saturating_sub(halo), (end + halo).min(frames));
            let t = hi - lo;
            let out = front_run(front, &mel.data[lo * BANDS..hi * BANDS], 1, t)?;
            for (h, o) in held.iter_mut().zip(&out) {
                for f in ready - lo..end - lo {
                    h.extend((0..ch).map(|c| o[c * t + f]));
                }
            }
            ready = end;
        }
        // Both edges of every patch, from the patch's own frames.
        edges_in.clear();
        for q in p..p + n {
            let patch = mel.patch(q);
            edges_in.extend_from_slice(&patch[..edge * BANDS]);
            edges_in.extend_from_slice(&patch[(PATCH_FRAMES - edge) * BANDS..]);
        }
        let edges = front_run(front, &edges_in, 2 * n, edge)?;
        raw.clear();
        for (b, t) in timbral.iter_mut().enumerate() {
            t.clear();
            for (i, q) in (p..p + n).enumerate() {
                let start = q * PATCH_HOP - base;
                let (head, tail) = (
                    &edges[b][2 * i * ch * edge..],
                    &edges[b][(2 * i + 1) * ch * edge..],
                );
                for c in 0..ch {
                    for f in 0..PATCH_FRAMES {
                        t.push(if f < halo {
                            head[c * edge + f]
                        } else if f >= PATCH_FRAMES - halo {
                            tail[c * edge + f + edge - PATCH_FRAMES]
                        } else {
                            held[b][(start + f) * ch + c]
                        });
                    }
                }
            }
        }
        for q in p..p + n {
            raw.extend_from_slice(mel.patch(q));
        }
        let shape_t = [n, ch, PATCH_FRAMES];
        let outputs = rest
            .run(ort::inputs![
                m.shared.raw.as_str() => tensor(&[n, 1, PATCH_FRAMES, BANDS], &raw)?,
                m.shared.timbral[0].as_str() => tensor(&shape_t, &timbral[0])?,
                m.shared.timbral[1].as_str() => tensor(&shape_t, &timbral[1])?,
            ])
            .map_err(run_error)?;
        sums.add(&outputs, n)?;
        p += n;
        // Frames before the next patch are no longer needed.
        let drop = (p * PATCH_HOP).min(ready) - base;
        for h in &mut held {
            h.drain(..drop * ch);
        }
        base += drop;
    }
    Ok(())
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
