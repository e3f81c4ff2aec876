//! Resampling to 16 kHz with libsamplerate in SINC_MEDIUM mode, the converter Essentia's
//! MonoLoader uses (`resampleQuality=1`). MUSICNN.md shows other good resamplers move the
//! vectors to cosine 0.98-0.99, so nothing else will do.

use samplerate::{ConverterType, Samplerate};

use crate::features::SAMPLE_RATE;

#[derive(Debug, thiserror::Error)]
#[error("resampler failed: {0}")]
pub struct ResampleError(String);

/// Streaming mono resampler from a source rate to 16 kHz. Keeps its filter state
/// between chunks; call [`Resampler::finish`] once at the end to flush it.
pub struct Resampler {
    converter: Option<Samplerate>,
}

/// libsamplerate is fed at most this many samples per call.
const CHUNK: usize = 16_384;

impl Resampler {
    /// A resampler from `source_rate` Hz; passes samples through when it is already 16 kHz
    /// (as Essentia's `Resample` does when the factor is 1).
    pub fn new(source_rate: u32) -> Result<Self, ResampleError> {
        if source_rate == 0 {
            return Err(ResampleError("source sample rate is 0".into()));
        }
        let converter = if source_rate == SAMPLE_RATE {
            None
        } else {
            Some(
                Samplerate::new(
                    ConverterType::SincMediumQuality,
                    source_rate,
                    SAMPLE_RATE,
                    1,
                )
                .map_err(|e| ResampleError(e.to_string()))?,
            )
        };
        Ok(Self { converter })
    }

    /// Resamples `input` and hands the 16 kHz output to `out`.
    pub fn process(
        &mut self,
        input: &[f32],
        mut out: impl FnMut(&[f32]),
    ) -> Result<(), ResampleError> {
        match &self.converter {
            None => out(input),
            Some(c) => {
                for chunk in input.chunks(CHUNK) {
                    let y = c.process(chunk).map_err(|e| ResampleError(e.to_string()))?;
                    out(&y);
                }
            }
        }
        Ok(())
    }

    /// Flushes the converter's delay line at the end of the input.
    pub fn finish(self, mut out: impl FnMut(&[f32])) -> Result<(), ResampleError> {
        if let Some(c) = &self.converter {
            let y = c
                .process_last(&[])
                .map_err(|e| ResampleError(e.to_string()))?;
            out(&y);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_length_follows_the_ratio() {
        let input: Vec<f32> = (0..44_100).map(|i| (i as f32 * 0.01).sin()).collect();
        let mut r = Resampler::new(44_100).unwrap();
        let mut n = 0;
        r.process(&input, |y| n += y.len()).unwrap();
        r.finish(|y| n += y.len()).unwrap();
        assert!((n as i64 - 16_000).abs() <= 1, "got {n} samples");
    }

    #[test]
    fn sixteen_khz_passes_through() {
        let mut r = Resampler::new(16_000).unwrap();
        let mut got = Vec::new();
        r.process(&[0.1, 0.2], |y| got.extend_from_slice(y))
            .unwrap();
        r.finish(|y| got.extend_from_slice(y)).unwrap();
        assert_eq!(got, vec![0.1, 0.2]);
    }
}
