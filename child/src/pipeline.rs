//! One file to one vector: decode -> mono -> 16 kHz -> mel frames -> patches -> model -> mean.
//! Decoding, resampling, features and inference stream together: a patch runs as soon as
//! its frames are made, and only the frames later patches need are kept.

use std::path::Path;
use std::time::Instant;

use crate::decode::{AudioStream, DecodeError, DecodeStats, FileTags};
use crate::features::{min_patch_seconds, patch_count, MelFrames, MelSpectrogram, SAMPLE_RATE};
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
    #[error("audio is longer than {hours} hours: not a track")]
    TooLong { hours: u64 },
    #[error(transparent)]
    Infer(#[from] InferError),
}

pub use chaarfm_shared::ipc::Timings;
use chaarfm_shared::ipc::PROGRESS_EVERY_S;

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

/// What decoding a whole file found, besides its mel frames.
struct Decoded {
    frames: usize,
    samples: usize,
    peak: f32,
    stats: DecodeStats,
    source_rate: u32,
    tags: FileTags,
}

impl Decoded {
    fn seconds(&self) -> f64 {
        self.samples as f64 / f64::from(SAMPLE_RATE)
    }

    /// Too short for one patch, or silent: nothing to embed.
    fn check(&self) -> Result<(), EmbedError> {
        if patch_count(self.frames) == 0 {
            return Err(EmbedError::TooShort {
                seconds: self.seconds(),
            });
        }
        if self.peak < SILENCE_PEAK {
            return Err(EmbedError::Silent {
                peak_dbfs: 20.0 * f64::from(self.peak).log10(),
            });
        }
        Ok(())
    }
}

/// Decodes `path`, resamples it and computes its mel frames, handing each run of new
/// frames to `sink` (with the seconds of 16 kHz audio so far) as soon as it is made, so
/// the caller keeps only what it needs. Timings go to `t`, except the sink's own.
fn decode_frames(
    path: &Path,
    t: &mut Timings,
    max_seconds: u64,
    mut sink: impl FnMut(&[f32], f64) -> Result<(), EmbedError>,
) -> Result<Decoded, EmbedError> {
    let start = Instant::now();
    let mut stream = AudioStream::open(path)?;
    let source_rate = stream.sample_rate();
    let mut resampler = Resampler::new(source_rate)?;
    t.decode_ms += ms(start);
    let mut frames = MelFrames::new();
    let mut peak = 0f32;
    let mut chunk = Vec::new();
    let mut feature_time = std::time::Duration::ZERO;
    let mut push = |frames: &mut MelFrames, y: &[f32]| {
        let s = Instant::now();
        peak = y.iter().fold(peak, |p, x| p.max(x.abs()));
        frames.push(y);
        feature_time += s.elapsed();
    };
    let max_samples = (max_seconds as usize).saturating_mul(SAMPLE_RATE as usize);
    loop {
        let s = Instant::now();
        let more = stream.next_chunk(&mut chunk)?;
        t.decode_ms += ms(s);
        if !more {
            break;
        }
        let s = Instant::now();
        resampler.process(&chunk, &mut |y: &[f32]| push(&mut frames, y));
        t.resample_ms += ms(s);
        if frames.samples() > max_samples {
            return Err(EmbedError::TooLong {
                hours: max_seconds / 3600,
            });
        }
        let new = frames.take();
        if !new.is_empty() {
            sink(&new, frames.samples() as f64 / f64::from(SAMPLE_RATE))?;
        }
    }
    let s = Instant::now();
    resampler.finish(&mut |y: &[f32]| push(&mut frames, y));
    t.resample_ms += ms(s);
    // Time inside `push` was counted under resampling too; move it to features.
    t.resample_ms -= feature_time.as_secs_f64() * 1e3;
    let s = Instant::now();
    let tail = frames.finish();
    t.features_ms += feature_time.as_secs_f64() * 1e3 + ms(s);
    sink(&tail.data, tail.samples as f64 / f64::from(SAMPLE_RATE))?;
    Ok(Decoded {
        frames: tail.frames,
        samples: tail.samples,
        peak,
        stats: stream.stats().clone(),
        source_rate,
        tags: stream.file_tags(),
    })
}

/// Decodes, resamples and computes all the mel frames of `path`, checking it is long
/// enough and not silent (benchmarks and tests; jobs stream, see [`embed_file_observed`]).
pub fn features(path: &Path) -> Result<Features, EmbedError> {
    let mut t = Timings::default();
    let mut data = Vec::new();
    let d = decode_frames(path, &mut t, crate::ffmpeg::MAX_SECONDS, |frames, _| {
        data.extend_from_slice(frames);
        Ok(())
    })?;
    d.check()?;
    Ok(Features {
        mel: MelSpectrogram {
            data,
            frames: d.frames,
            samples: d.samples,
        },
        decode: d.stats,
        source_rate: d.source_rate,
        timings: t,
        tags: d.tags,
    })
}

/// The whole pipeline for one file.
pub fn embed_file(path: &Path, model: &mut Musicnn) -> Result<Embedding, EmbedError> {
    embed_file_observed(path, model, |_| {})
}

/// [`embed_file`], calling `progress(seconds)` every [`PROGRESS_EVERY_S`] of audio
/// decoded and embedded (the child reports it, so the supervisor knows the job is not
/// hung). Decoding and inference interleave: patches run as soon as their frames are
/// made, and only the frames later patches need are kept, so memory does not grow with
/// the track's length. The one embed function: the child serves with it and the
/// accuracy tests call it.
pub fn embed_file_observed(
    path: &Path,
    model: &mut Musicnn,
    mut progress: impl FnMut(f64),
) -> Result<Embedding, EmbedError> {
    let mut timings = Timings::default();
    let mut net = model.stream();
    let mut infer = std::time::Duration::ZERO;
    let mut reported = 0.0;
    let d = decode_frames(
        path,
        &mut timings,
        crate::ffmpeg::MAX_SECONDS,
        |frames, seconds| {
            let s = Instant::now();
            net.push(frames)?;
            infer += s.elapsed();
            if seconds >= reported + PROGRESS_EVERY_S {
                reported = seconds;
                progress(seconds);
            }
            Ok(())
        },
    )?;
    d.check()?;
    let s = Instant::now();
    let p = net.finish()?;
    infer += s.elapsed();
    timings.infer_ms = infer.as_secs_f64() * 1e3;
    Ok(Embedding {
        vector: p.vector,
        tags: p.tags,
        patches: p.patches,
        duration_s: d.seconds(),
        timings,
        file_tags: d.tags,
    })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit mono WAV of `seconds` of a 440 Hz tone at 16 kHz.
    fn tone_wav(path: &Path, seconds: u32) {
        let n = seconds * SAMPLE_RATE;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + 2 * n).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes()); // PCM
        b.extend_from_slice(&1u16.to_le_bytes()); // mono
        b.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
        b.extend_from_slice(&(2 * SAMPLE_RATE).to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(2 * n).to_le_bytes());
        for i in 0..n {
            let v = (f64::from(i) * 440.0 * std::f64::consts::TAU / f64::from(SAMPLE_RATE)).sin();
            b.extend_from_slice(&((v * 8000.0) as i16).to_le_bytes());
        }
        std::fs::write(path, b).unwrap();
    }

    /// The length cap stops decoding as soon as the audio passes it (a job's file is
    /// refused, not streamed to the end); 4 hours in production, seconds here.
    #[test]
    fn audio_past_the_length_cap_is_refused_while_decoding() {
        let dir = std::env::temp_dir().join(format!("chaarfm-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tone.wav");
        tone_wav(&path, 5);
        let mut seen = 0.0;
        let long = decode_frames(&path, &mut Timings::default(), 3, |_, s| {
            seen = s;
            Ok(())
        });
        assert!(
            matches!(long, Err(EmbedError::TooLong { .. })),
            "{:?}",
            long.map(|d| d.samples)
        );
        assert!(
            seen <= 3.0,
            "frames past the cap reached the sink: {seen} s"
        );
        let ok = decode_frames(&path, &mut Timings::default(), 6, |_, _| Ok(())).unwrap();
        assert_eq!(ok.samples, 5 * SAMPLE_RATE as usize);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
