//! One file to one vector: decode -> mono -> 16 kHz -> mel frames -> patches -> model -> mean.
//! Decoding, resampling and features stream together; only mel frames are kept.

use std::path::Path;
use std::time::Instant;

use crate::decode::{AudioStream, DecodeError, DecodeStats, FileTags};
use crate::features::{min_patch_seconds, MelFrames, MelSpectrogram, SAMPLE_RATE};
use crate::infer::{InferError, Musicnn};
use crate::resample::{ResampleError, Resampler};

/// Tracks whose peak stays below this (-80 dBFS) are refused as silent.
const SILENCE_PEAK: f32 = 1e-4;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Resample(#[from] ResampleError),
    #[error(
        "audio too short: {seconds:.2} s, need at least {:.2} s",
        min_patch_seconds()
    )]
    TooShort { seconds: f64 },
    #[error("audio is silent (peak {peak_dbfs:.0} dBFS): nothing to embed")]
    Silent { peak_dbfs: f64 },
    #[error(transparent)]
    Infer(#[from] InferError),
}

pub use chaarfm_shared::ipc::Timings;

/// Audio of one file turned into model input.
#[derive(Debug)]
pub struct Features {
    pub mel: MelSpectrogram,
    pub decode: DecodeStats,
    pub source_rate: u32,
    pub timings: Timings,
    pub tags: FileTags,
}

impl Features {
    /// Seconds of audio at 16 kHz.
    pub fn duration_s(&self) -> f64 {
        self.mel.samples as f64 / f64::from(SAMPLE_RATE)
    }
}

/// The result for one file.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub vector: Vec<f32>,
    pub tags: Vec<f32>,
    pub patches: usize,
    pub duration_s: f64,
    pub timings: Timings,
    /// Artist and title from the file's own tags.
    pub file_tags: FileTags,
}

/// Decodes, resamples and computes the mel frames of `path`, checking it is long enough
/// and not silent.
pub fn features(path: &Path) -> Result<Features, EmbedError> {
    let mut t = Timings::default();
    let start = Instant::now();
    let mut stream = AudioStream::open(path)?;
    let source_rate = stream.sample_rate();
    let mut resampler = Resampler::new(source_rate)?;
    t.decode_ms += ms(start);
    let mut frames = MelFrames::new();
    let mut peak = 0f32;
    let mut chunk = Vec::new();
    let mut feature_time = std::time::Duration::ZERO;
    let mut push = |y: &[f32]| {
        let s = Instant::now();
        peak = y.iter().fold(peak, |p, x| p.max(x.abs()));
        frames.push(y);
        feature_time += s.elapsed();
    };
    loop {
        let s = Instant::now();
        let more = stream.next_chunk(&mut chunk)?;
        t.decode_ms += ms(s);
        if !more {
            break;
        }
        let s = Instant::now();
        resampler.process(&chunk, &mut push);
        t.resample_ms += ms(s);
    }
    let s = Instant::now();
    resampler.finish(&mut push);
    t.resample_ms += ms(s);
    // Time inside `push` was counted under resampling too; move it to features.
    t.resample_ms -= feature_time.as_secs_f64() * 1e3;
    let s = Instant::now();
    let mel = frames.finish();
    t.features_ms = feature_time.as_secs_f64() * 1e3 + ms(s);

    let seconds = mel.samples as f64 / f64::from(SAMPLE_RATE);
    if mel.patches() == 0 {
        return Err(EmbedError::TooShort { seconds });
    }
    if peak < SILENCE_PEAK {
        return Err(EmbedError::Silent {
            peak_dbfs: 20.0 * f64::from(peak).log10(),
        });
    }
    Ok(Features {
        mel,
        decode: stream.stats().clone(),
        source_rate,
        timings: t,
        tags: stream.file_tags(),
    })
}

/// The whole pipeline for one file.
pub fn embed_file(path: &Path, model: &mut Musicnn) -> Result<Embedding, EmbedError> {
    embed_file_observed(path, model, |_| {})
}

/// [`embed_file`], calling `decoded(seconds)` once the audio is decoded and before
/// inference (the child reports it, so the supervisor can set the job's deadline). The
/// one embed function: the child serves with it and the accuracy tests call it.
pub fn embed_file_observed(
    path: &Path,
    model: &mut Musicnn,
    decoded: impl FnOnce(f64),
) -> Result<Embedding, EmbedError> {
    let f = features(path)?;
    decoded(f.duration_s());
    let s = Instant::now();
    let p = model.predict(&f.mel)?;
    let mut timings = f.timings;
    timings.infer_ms = ms(s);
    Ok(Embedding {
        vector: p.vector,
        tags: p.tags,
        patches: p.patches,
        duration_s: f.duration_s(),
        timings,
        file_tags: f.tags,
    })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}
