//! MusiCNN inference with ONNX Runtime: patches in bounded batches, mean over patches.

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::features::{patch_count, MelSpectrogram, BANDS, PATCH_FRAMES, PATCH_HOP};
use crate::model::{self, manifest, ModelError};
use crate::runtime::{self, RuntimeError};

pub use chaarfm_shared::ipc::{Device, Engine};

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

/// The sessions of one engine; each runs a batch of patches its own way.
enum Sessions {
    Patch(PatchEngine),
    Shared(Box<SharedEngine>),
}

/// The whole model, once per patch.
struct PatchEngine {
    session: Session,
}

/// The shared engine's four sessions (`graph::shared_engine`): the timbral front-end
/// without time padding (a track's interior), with only a patch's first or last frames
/// padded (its edges, as the whole model sees them), and the per-patch rest.
struct SharedEngine {
    front: Session,
    /// The front-end takes whole tiles of this many output frames (its Winograd tile):
    /// a chunk is padded with zero frames to one, and the frames past it are dropped.
    front_tile: usize,
    /// A chunk's mel frames when padded.
    front_input: Vec<f32>,
    head: Session,
    tail: Session,
    rest: Session,
    stages: Stages,
}

/// Where the shared engine's time went since it was loaded, in ms: the timbral
/// front-end over tracks' interiors, the patch edges, splicing them into each patch's
/// timbral input, and the per-patch rest (the roofline benchmark's split).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stages {
    pub front_ms: f64,
    pub edges_ms: f64,
    pub splice_ms: f64,
    pub rest_ms: f64,
}

/// A loaded MusiCNN model.
pub struct Musicnn {
    sessions: Sessions,
    batch: usize,
    /// Model inputs built per batch, kept across batches and tracks.
    scratch: Scratch,
    model_sha256: String,
    device: Device,
}

/// Per-batch input buffers: patches, and for the shared engine their edges and timbral
/// features.
#[derive(Default)]
struct Scratch {
    raw: Vec<f32>,
    heads: Vec<f32>,
    tails: Vec<f32>,
    timbral: [Vec<f32>; 2],
}

/// Frames of new timbral output the shared engine computes per front-end call at most.
/// Measured (embed bench): at 512 a child peaks at 170-180 MB (210 MB on a 30-minute
/// file), at 128 at the per-patch engine's 90-100 MB and no slower (smaller activations
/// stay in cache); a whole track at once takes 2 GiB.
const FRONT_CHUNK: usize = 128;
/// The same for a front-end in Winograd tiles, whose intermediates are 2.5x the
/// output's size per point: measured (ORT 1.32, one thread, ms per 128 frames) 7.3 at 32
/// frames, 7.9 at 64, 8.7 at 128, and a child peaks at 111 MB at 128.
const WINOGRAD_CHUNK: usize = 32;

/// The channel block of ONNX Runtime's CPU convolutions (MLAS's NCHWc layout: 16 floats
/// with AVX-512, else 8): [`crate::graph::pool_first`] pads branches to a multiple of it
/// so that their pooling stays in that layout. Only speed depends on it, never values.
pub fn nchwc_block() -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return 16;
    }
    8
}

/// Mel frames a stream lets pile up before it drops those no patch needs any more.
const MEL_SLACK: usize = 1024;

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
            Engine::Patch => Sessions::Patch(PatchEngine {
                session: session(&file.bytes).map_err(corrupt)?,
            }),
            Engine::Shared => {
                // Winograd tiles were measured on CPUs only (MLAS): a GPU runs the direct
                // convolutions it was tested with.
                let mut m = manifest().clone();
                let block = match opts.device {
                    Device::Cpu => nchwc_block(),
                    Device::Cuda(_) => {
                        m.shared.winograd_tile = 0;
                        1
                    }
                };
                let models =
                    crate::graph::shared_engine(&file.bytes, &m, block).map_err(|source| {
                        corrupt(InferError::Split {
                            path: shown.clone(),
                            source,
                        })
                    })?;
                Sessions::Shared(Box::new(SharedEngine {
                    front: session(&models.front).map_err(corrupt)?,
                    front_tile: models.front_tile,
                    front_input: Vec::new(),
                    head: session(&models.head).map_err(corrupt)?,
                    tail: session(&models.tail).map_err(corrupt)?,
                    rest: session(&models.rest).map_err(corrupt)?,
                    stages: Stages::default(),
                }))
            }
        };
        let batch = opts.batch.max(1);
        let mut me = Self {
            sessions,
            batch,
            scratch: Scratch::default(),
            model_sha256: file.sha256,
            device: opts.device,
        };
        if !file.hash_matches {
            match me.computes_published_values() {
                Ok(true) => tracing::info!(
                    path = %path.display(),
                    "model bytes differ from the published conversion but compute the same values; using it"
                ),
                _ => return Err(model::hash_error(path, &me.model_sha256).into()),
            }
        }
        Ok(me)
    }

    /// The model probe, the one check that a model is the published one: run on the
    /// manifest's probe input, it gives the published values (`model::probe_matches`).
    pub fn computes_published_values(&mut self) -> Result<bool, InferError> {
        let probe = MelSpectrogram {
            data: model::probe_input(),
            frames: PATCH_FRAMES,
            samples: 0,
        };
        Ok(model::probe_matches(&self.predict(&probe)?.vector))
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
            Sessions::Shared(_) => Engine::Shared,
        }
    }

    /// Runs every whole patch of `mel` and averages the outputs.
    pub fn predict(&mut self, mel: &MelSpectrogram) -> Result<Prediction, InferError> {
        let mut stream = self.stream();
        stream.push(&mel.data[..mel.frames * BANDS])?;
        stream.finish()
    }

    /// The shared engine's time per stage so far (none for the per-patch engine).
    pub fn stages(&self) -> Option<Stages> {
        match &self.sessions {
            Sessions::Shared(e) => Some(e.stages),
            Sessions::Patch(_) => None,
        }
    }

    /// Starts a track whose mel frames arrive in pieces ([`Stream`]).
    pub fn stream(&mut self) -> Stream<'_> {
        let m = manifest();
        let halo = m.shared.halo;
        Stream {
            model: self,
            mel: Mel::default(),
            frames: 0,
            next: 0,
            sums: Sums {
                emb: vec![0f64; m.embedding_dim],
                tags: vec![0f64; m.tags.len()],
            },
            timbral: Timbral {
                held: std::array::from_fn(|_| vec![Vec::new(); m.shared.channels]),
                base: halo,
                ready: halo,
            },
        }
    }
}

/// One track in flight (`infer::Stream`): mel frames are pushed as the decoder makes
/// them and every batch of whole patches runs as soon as its frames are in, so decoding
/// and inference interleave and memory stays bounded however long the track is: only the
/// frames the next patch still needs are kept.
pub struct Stream<'m> {
    model: &'m mut Musicnn,
    mel: Mel,
    /// Frames pushed so far.
    frames: usize,
    /// The next patch to run.
    next: usize,
    sums: Sums,
    /// The shared engine's timbral features computed ahead.
    timbral: Timbral,
}

/// The mel frames a track still needs: frame `base` on, frame-major.
#[derive(Default)]
struct Mel {
    data: Vec<f32>,
    base: usize,
}

impl Mel {
    /// Frames `from..to`.
    fn frames(&self, from: usize, to: usize) -> &[f32] {
        &self.data[(from - self.base) * BANDS..(to - self.base) * BANDS]
    }

    /// Patch `q`'s frames.
    fn patch(&self, q: usize) -> &[f32] {
        self.frames(q * PATCH_HOP, q * PATCH_HOP + PATCH_FRAMES)
    }
}

/// Shared engine: timbral outputs of frames `base..ready`, per branch one vector of
/// frames per channel: the layout the front-end gives and the rest takes, so keeping a
/// chunk and splicing a patch are a copy per channel, not a transpose per value.
struct Timbral {
    held: [Vec<Vec<f32>>; 2],
    base: usize,
    ready: usize,
}

impl Stream<'_> {
    /// Adds mel frames (`BANDS` floats each) and runs every full batch of whole patches.
    pub fn push(&mut self, frames: &[f32]) -> Result<(), InferError> {
        debug_assert_eq!(frames.len() % BANDS, 0);
        self.mel.data.extend_from_slice(frames);
        self.frames += frames.len() / BANDS;
        self.run(false)
    }

    /// Runs the last whole patches and averages the outputs over all of them.
    pub fn finish(mut self) -> Result<Prediction, InferError> {
        self.run(true)?;
        let patches = self.next;
        let mean = |sum: &[f64]| -> Vec<f32> {
            sum.iter()
                .map(|s| (s / patches.max(1) as f64) as f32)
                .collect()
        };
        let vector = mean(&self.sums.emb);
        if vector.iter().any(|v| !v.is_finite()) {
            return Err(InferError::NonFinite);
        }
        Ok(Prediction {
            vector,
            tags: mean(&self.sums.tags),
            patches,
        })
    }

    /// Runs whole patches in batches; a smaller last batch only when `last`.
    fn run(&mut self, last: bool) -> Result<(), InferError> {
        let batch = self.model.batch;
        loop {
            let waiting = patch_count(self.frames) - self.next;
            if waiting == 0 || (!last && waiting < batch) {
                return Ok(());
            }
            let n = batch.min(waiting);
            let patches = self.next..self.next + n;
            let (scratch, sums) = (&mut self.model.scratch, &mut self.sums);
            match &mut self.model.sessions {
                Sessions::Patch(e) => e.batch(&self.mel, patches, scratch, sums)?,
                Sessions::Shared(e) => {
                    e.batch(&self.mel, &mut self.timbral, patches, scratch, sums)?
                }
            }
            self.next += n;
            // Frames before the next patch are no longer needed by anything.
            let drop = self.next * PATCH_HOP - self.mel.base;
            if drop >= MEL_SLACK {
                self.mel.data.drain(..drop * BANDS);
                self.mel.base += drop;
            }
        }
    }
}

impl PatchEngine {
    /// The whole model on `patches`.
    fn batch(
        &mut self,
        mel: &Mel,
        patches: Range<usize>,
        scratch: &mut Scratch,
        sums: &mut Sums,
    ) -> Result<(), InferError> {
        let m = manifest();
        let n = patches.len();
        let buf = &mut scratch.raw;
        buf.clear();
        for q in patches {
            buf.extend_from_slice(mel.patch(q));
        }
        let input = tensor(&[n, PATCH_FRAMES, BANDS], buf)?;
        let outputs = self
            .session
            .run(ort::inputs![m.input.as_str() => input])
            .map_err(run_error)?;
        sums.add(&outputs, n)
    }
}

impl SharedEngine {
    /// The shared engine on `patches` (`infer::SharedEngine::batch`, MUSICNN.md
    /// section 8): the timbral front-end runs over the track's interior once, in chunks
    /// of at most [`FRONT_CHUNK`] frames ([`WINOGRAD_CHUNK`] in Winograd tiles) with no
    /// time padding (each chunk is given its `halo` neighbours, so chunk borders are
    /// exact); each patch's first and last `halo` frames are computed from the patch
    /// alone, padded as the whole model pads them (the padding is a *normalized* zero, so
    /// it cannot be faked on the raw input); the rest of the model runs per patch.
    fn batch(
        &mut self,
        mel: &Mel,
        held: &mut Timbral,
        patches: Range<usize>,
        scratch: &mut Scratch,
        sums: &mut Sums,
    ) -> Result<(), InferError> {
        let m = manifest();
        let (ch, halo) = (m.shared.channels, m.shared.halo);
        let (first, end, n) = (patches.start, patches.end, patches.len());
        let need = (end - 1) * PATCH_HOP + PATCH_FRAMES - halo;
        let mut clock = Instant::now();
        let mut lap = |stage: &mut f64| {
            let now = Instant::now();
            *stage += (now - clock).as_secs_f64() * 1e3;
            clock = now;
        };
        while held.ready < need {
            let chunk = match self.front_tile {
                1 => FRONT_CHUNK,
                _ => WINOGRAD_CHUNK,
            };
            let to = (held.ready + chunk).min(need);
            let t = to - held.ready;
            let mut input = mel.frames(held.ready - halo, to + halo);
            let whole = t.next_multiple_of(self.front_tile);
            if whole != t {
                self.front_input.clear();
                self.front_input.extend_from_slice(input);
                self.front_input.resize((whole + 2 * halo) * BANDS, 0.0);
                input = &self.front_input;
            }
            let out = front_run(&mut self.front, input, 1, whole + 2 * halo, whole)?;
            for (h, o) in held.held.iter_mut().zip(&out) {
                for (h, o) in h.iter_mut().zip(o.chunks_exact(whole)) {
                    h.extend_from_slice(&o[..t]);
                }
            }
            held.ready = to;
        }
        lap(&mut self.stages.front_ms);
        // Both edges of every patch, from the patch's own frames.
        let Scratch {
            raw,
            heads,
            tails,
            timbral,
        } = scratch;
        for buf in [&mut *raw, &mut *heads, &mut *tails] {
            buf.clear();
        }
        for q in patches.clone() {
            let patch = mel.patch(q);
            heads.extend_from_slice(&patch[..2 * halo * BANDS]);
            tails.extend_from_slice(&patch[(PATCH_FRAMES - 2 * halo) * BANDS..]);
            raw.extend_from_slice(patch);
        }
        let head = front_run(&mut self.head, heads, n, 2 * halo, halo)?;
        let tail = front_run(&mut self.tail, tails, n, 2 * halo, halo)?;
        lap(&mut self.stages.edges_ms);
        for (b, t) in timbral.iter_mut().enumerate() {
            t.clear();
            for (i, q) in (first..end).enumerate() {
                let start = q * PATCH_HOP - held.base;
                let (head, tail) = (&head[b][i * ch * halo..], &tail[b][i * ch * halo..]);
                for (c, h) in held.held[b].iter().enumerate() {
                    t.extend_from_slice(&head[c * halo..(c + 1) * halo]);
                    t.extend_from_slice(&h[start + halo..start + PATCH_FRAMES - halo]);
                    t.extend_from_slice(&tail[c * halo..(c + 1) * halo]);
                }
            }
        }
        lap(&mut self.stages.splice_ms);
        let shape_t = [n, ch, PATCH_FRAMES];
        let outputs = self
            .rest
            .run(ort::inputs![
                m.shared.raw.as_str() => tensor(&[n, 1, PATCH_FRAMES, BANDS], raw)?,
                m.shared.timbral[0].as_str() => tensor(&shape_t, &timbral[0])?,
                m.shared.timbral[1].as_str() => tensor(&shape_t, &timbral[1])?,
            ])
            .map_err(run_error)?;
        sums.add(&outputs, n)?;
        lap(&mut self.stages.rest_ms);
        // Timbral frames before the next patch's interior are no longer needed.
        let drop = (end * PATCH_HOP + halo).min(held.ready) - held.base;
        for h in held.held.iter_mut().flatten() {
            h.drain(..drop);
        }
        held.base += drop;
        Ok(())
    }
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

/// Runs a front-end session on `n` inputs of `t_in` consecutive mel frames each, laid
/// out in `raw`; returns the two branches, each `[n, channels, t_out]`.
fn front_run(
    front: &mut Session,
    raw: &[f32],
    n: usize,
    t_in: usize,
    t_out: usize,
) -> Result<[Vec<f32>; 2], InferError> {
    let c = &manifest().shared;
    let input = tensor(&[n, 1, t_in, BANDS], raw)?;
    let outputs = front
        .run(ort::inputs![c.raw.as_str() => input])
        .map_err(run_error)?;
    let len = n * c.channels * t_out;
    Ok([
        extract(&outputs, &c.timbral[0], len)?.to_vec(),
        extract(&outputs, &c.timbral[1], len)?.to_vec(),
    ])
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
