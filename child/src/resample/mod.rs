//! Resampling to 16 kHz with libsamplerate's SINC_MEDIUM_QUALITY converter, the one
//! Essentia's MonoLoader uses (`resampleQuality=1`). MUSICNN.md shows other good
//! resamplers move the vectors to cosine 0.98-0.99, so nothing else will do. [`sinc`]
//! re-implements it so it runs ~25x faster; tests check it against libsamplerate itself.

mod sinc;

use crate::features::SAMPLE_RATE;

#[derive(Debug, thiserror::Error)]
#[error("cannot resample from {0} Hz: the source rate must be between 62 Hz and 1 MHz")]
pub struct ResampleError(u32);

/// Streaming mono resampler from a source rate to 16 kHz.
pub struct Resampler {
    converter: Option<sinc::SincMedium>,
    out: Vec<f32>,
}

impl Resampler {
    /// A resampler from `source_rate` Hz; passes samples through when it is already 16 kHz
    /// (as Essentia's `Resample` does when the factor is 1).
    pub fn new(source_rate: u32) -> Result<Self, ResampleError> {
        // libsamplerate accepts ratios within 1/256 .. 256.
        if !(SAMPLE_RATE / 256..=1_000_000).contains(&source_rate) {
            return Err(ResampleError(source_rate));
        }
        let converter = (source_rate != SAMPLE_RATE)
            .then(|| sinc::SincMedium::new(f64::from(SAMPLE_RATE) / f64::from(source_rate)));
        Ok(Self {
            converter,
            out: Vec::new(),
        })
    }

    /// Resamples `input` and hands the 16 kHz output to `out`.
    pub fn process(&mut self, input: &[f32], mut out: impl FnMut(&[f32])) {
        match &mut self.converter {
            None => out(input),
            Some(c) => {
                self.out.clear();
                c.process(input, &mut self.out);
                out(&self.out);
            }
        }
    }

    /// Flushes the converter at the end of the input.
    pub fn finish(mut self, mut out: impl FnMut(&[f32])) {
        if let Some(c) = &mut self.converter {
            self.out.clear();
            c.finish(&mut self.out);
            out(&self.out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_signal(n: usize, rate: u32) -> Vec<f32> {
        let mut s = 12345u32;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(1664525).wrapping_add(1013904223);
                let t = i as f64 / f64::from(rate);
                (0.4 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                    + 0.2 * (2.0 * std::f64::consts::PI * 7000.0 * t).sin()
                    + 0.1 * (f64::from(s) / 4294967296.0 - 0.5)) as f32
            })
            .collect()
    }

    fn ours(input: &[f32], rate: u32, chunk: usize) -> Vec<f32> {
        let mut r = Resampler::new(rate).unwrap();
        let mut got = Vec::new();
        for c in input.chunks(chunk) {
            r.process(c, |y| got.extend_from_slice(y));
        }
        r.finish(|y| got.extend_from_slice(y));
        got
    }

    /// libsamplerate itself, the way Essentia drives it (chunks, then end of input).
    fn libsamplerate(input: &[f32], rate: u32) -> Vec<f32> {
        let c = samplerate::Samplerate::new(
            samplerate::ConverterType::SincMediumQuality,
            rate,
            SAMPLE_RATE,
            1,
        )
        .unwrap();
        let mut got = Vec::new();
        for chunk in input.chunks(4096) {
            got.extend(c.process(chunk).unwrap());
        }
        got.extend(c.process_last(&[]).unwrap());
        got
    }

    /// Resamples `n` samples at `rate` in chunks of `chunk` and compares with libsamplerate.
    fn assert_like_libsamplerate(rate: u32, n: usize, chunk: usize) {
        let input = test_signal(n, rate);
        let want = libsamplerate(&input, rate);
        let got = ours(&input, rate, chunk);
        assert_eq!(got.len(), want.len(), "{rate} Hz: sample count");
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff < 2e-5,
            "{rate} Hz, chunks of {chunk}: max abs difference {max_diff}"
        );
    }

    #[test]
    fn matches_libsamplerate_sample_for_sample() {
        for rate in [44_100, 48_000, 22_050, 32_000, 8_000, 11_025, 96_000] {
            assert_like_libsamplerate(rate, rate as usize * 3 + 123, 1000);
        }
    }

    /// Where an output's position falls a hair short of a whole input sample, its phase
    /// rounds to a whole step and libsamplerate's left half takes one tap more (one
    /// output in 16,000 at 44,101 Hz, 19 in 32,000 at 44,110 Hz; earlier versions were off
    /// by up to 0.024 there). At 44,101 Hz nearly every output also has a phase of its
    /// own, so the phase cache fills and is emptied while outputs are planned.
    #[test]
    fn a_phase_that_rounds_to_a_whole_step_matches_libsamplerate() {
        for rate in [44_101, 44_110] {
            for chunk in [100_000, 1000] {
                assert_like_libsamplerate(rate, rate as usize * 2, chunk);
            }
        }
    }

    #[test]
    fn chunking_does_not_change_the_output() {
        let input = test_signal(50_000, 44_100);
        assert_eq!(ours(&input, 44_100, 1), ours(&input, 44_100, 50_000));
    }

    #[test]
    fn sixteen_khz_passes_through_and_bad_rates_are_refused() {
        assert_eq!(ours(&[0.1, 0.2], 16_000, 1), vec![0.1, 0.2]);
        assert!(Resampler::new(0).is_err());
        assert!(Resampler::new(10).is_err());
    }
}
