//! MusiCNN input features, exactly as Essentia's `TensorflowInputMusiCNN` computes them
//! (see `../shared/MUSICNN.md`, steps 3-5): 512-sample frames with hop 256, symmetric Hann,
//! power spectrum, 96 Slaney mel bands with unit-area triangles, `log10(1 + 10000 x)`,
//! then 187-frame patches with hop 93.
//!
//! [`MelFrames`] is streaming: samples go in as they are resampled and only the mel frames
//! (96 floats per 256 samples) are kept, so a long track never sits in memory as PCM.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate the model expects.
pub const SAMPLE_RATE: u32 = 16_000;
/// Frame length in samples.
pub const FRAME_SIZE: usize = 512;
/// Hop between frames in samples.
pub const HOP: usize = 256;
/// Spectrum bins of a 512-point real FFT.
pub const BINS: usize = FRAME_SIZE / 2 + 1;
/// Mel bands per frame.
pub const BANDS: usize = 96;
/// Frames per patch (model input is `[batch, PATCH_FRAMES, BANDS]`).
pub const PATCH_FRAMES: usize = 187;
/// Hop between patches, in frames.
pub const PATCH_HOP: usize = 93;
/// Floats in one patch.
pub const PATCH_LEN: usize = PATCH_FRAMES * BANDS;

/// Frames Essentia's `FrameCutter(frameSize=512, hopSize=256)` cuts from `n` samples.
pub fn frame_count(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        n.div_ceil(HOP) + 1
    }
}

/// Whole patches in `frames` frames (the tail is dropped).
pub fn patch_count(frames: usize) -> usize {
    if frames < PATCH_FRAMES {
        0
    } else {
        (frames - PATCH_FRAMES) / PATCH_HOP + 1
    }
}

/// Shortest audio, in seconds, that yields one patch (187 frames x 256 / 16 kHz).
pub fn min_patch_seconds() -> f64 {
    (PATCH_FRAMES * HOP) as f64 / f64::from(SAMPLE_RATE)
}

/// Symmetric, unnormalised Hann window: `0.5 - 0.5 cos(2 pi n / 511)`.
pub fn hann_window() -> Vec<f32> {
    (0..FRAME_SIZE)
        .map(|n| {
            let x = 2.0 * std::f64::consts::PI * n as f64 / (FRAME_SIZE - 1) as f64;
            (0.5 - 0.5 * x.cos()) as f32
        })
        .collect()
}

fn hz_to_slaney_mel(f: f64) -> f64 {
    let log_step = 6.4f64.ln() / 27.0;
    if f < 1000.0 {
        f / (200.0 / 3.0)
    } else {
        15.0 + (f / 1000.0).ln() / log_step
    }
}

fn slaney_mel_to_hz(m: f64) -> f64 {
    let log_step = 6.4f64.ln() / 27.0;
    if m < 15.0 {
        m * (200.0 / 3.0)
    } else {
        1000.0 * ((m - 15.0) * log_step).exp()
    }
}

/// One triangular band: weights for the contiguous bins starting at `first_bin`.
#[derive(Debug, Clone)]
struct Band {
    first_bin: usize,
    weights: Vec<f32>,
}

/// The 96-band Slaney mel filterbank, stored sparsely (each band touches a few bins).
#[derive(Debug, Clone)]
pub struct MelFilterbank {
    bands: Vec<Band>,
}

impl Default for MelFilterbank {
    fn default() -> Self {
        Self::new()
    }
}

impl MelFilterbank {
    /// Builds the filterbank (98 edges evenly spaced in Slaney mel from 0 to 8 kHz;
    /// triangles linear in Hz; each scaled to unit area).
    pub fn new() -> Self {
        let nyquist = f64::from(SAMPLE_RATE) / 2.0;
        let (lo, hi) = (hz_to_slaney_mel(0.0), hz_to_slaney_mel(nyquist));
        let step = (hi - lo) / (BANDS + 1) as f64;
        let edges: Vec<f64> = (0..BANDS + 2)
            .map(|i| slaney_mel_to_hz(lo + step * i as f64))
            .collect();
        let bin_hz = f64::from(SAMPLE_RATE) / FRAME_SIZE as f64;
        let bands = (0..BANDS)
            .map(|i| {
                let (left, centre, right) = (edges[i], edges[i + 1], edges[i + 2]);
                let scale = 2.0 / (right - left);
                let mut first_bin = None;
                let mut weights = Vec::new();
                for bin in 0..BINS {
                    let f = bin as f64 * bin_hz;
                    let w = if f >= left && f < centre {
                        (f - left) / (centre - left)
                    } else if f >= centre && f < right {
                        (right - f) / (right - centre)
                    } else {
                        0.0
                    };
                    if w > 0.0 {
                        first_bin.get_or_insert(bin);
                        weights.push((w * scale) as f32);
                    } else if first_bin.is_some() {
                        break;
                    }
                }
                Band {
                    first_bin: first_bin.unwrap_or(0),
                    weights,
                }
            })
            .collect();
        Self { bands }
    }

    /// Weight of `band` at `bin` (zero outside the triangle). For tests and inspection.
    pub fn weight(&self, band: usize, bin: usize) -> f32 {
        let b = &self.bands[band];
        bin.checked_sub(b.first_bin)
            .and_then(|i| b.weights.get(i).copied())
            .unwrap_or(0.0)
    }

    /// Applies the filterbank to a power spectrum of [`BINS`] values.
    pub fn apply(&self, power: &[f32], out: &mut [f32]) {
        for (band, o) in self.bands.iter().zip(out.iter_mut()) {
            let bins = &power[band.first_bin..band.first_bin + band.weights.len()];
            *o = bins.iter().zip(&band.weights).map(|(p, w)| p * w).sum();
        }
    }
}

/// Log-compressed mel frames of a whole track, row-major `[frames, BANDS]`.
#[derive(Debug, Clone, Default)]
pub struct MelSpectrogram {
    /// `frames * BANDS` values.
    pub data: Vec<f32>,
    /// Number of frames.
    pub frames: usize,
    /// Number of 16 kHz samples the frames were cut from.
    pub samples: usize,
}

impl MelSpectrogram {
    /// Number of whole patches.
    pub fn patches(&self) -> usize {
        patch_count(self.frames)
    }

    /// One mel frame (96 bands).
    pub fn frame(&self, k: usize) -> &[f32] {
        &self.data[k * BANDS..(k + 1) * BANDS]
    }

    /// Patch `p`: frames `93p .. 93p + 187`, contiguous in memory as the model wants them.
    pub fn patch(&self, p: usize) -> &[f32] {
        let start = p * PATCH_HOP * BANDS;
        &self.data[start..start + PATCH_LEN]
    }
}

/// Iterator over the whole patches of a spectrogram, each `PATCH_LEN` floats.
pub fn mel_patches(mel: &MelSpectrogram) -> impl ExactSizeIterator<Item = &[f32]> + '_ {
    (0..mel.patches()).map(move |p| mel.patch(p))
}

/// The window and filterbank, built once per process and shared by every track.
fn tables() -> &'static (Vec<f32>, MelFilterbank) {
    static T: std::sync::OnceLock<(Vec<f32>, MelFilterbank)> = std::sync::OnceLock::new();
    T.get_or_init(|| (hann_window(), MelFilterbank::new()))
}

/// Streaming frame cutter + mel features. Push 16 kHz mono samples in any chunk sizes,
/// then [`MelFrames::finish`].
pub struct MelFrames {
    window: &'static [f32],
    filterbank: &'static MelFilterbank,
    fft: Arc<dyn RealToComplex<f32>>,
    fft_in: Vec<f32>,
    fft_out: Vec<realfft::num_complex::Complex<f32>>,
    fft_scratch: Vec<realfft::num_complex::Complex<f32>>,
    power: Vec<f32>,
    /// Pending samples; `pending[pos]` is signal sample `256 * frames_done - 256`.
    pending: Vec<f32>,
    pos: usize,
    samples: usize,
    out: MelSpectrogram,
}

impl Default for MelFrames {
    fn default() -> Self {
        Self::new()
    }
}

impl MelFrames {
    /// A fresh extractor. Frame 0 starts 256 samples before the signal (zeros).
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(FRAME_SIZE);
        let (window, filterbank) = tables();
        Self {
            window,
            filterbank,
            fft_in: fft.make_input_vec(),
            fft_out: fft.make_output_vec(),
            fft_scratch: fft.make_scratch_vec(),
            fft,
            power: vec![0.0; BINS],
            pending: vec![0.0; HOP],
            pos: 0,
            samples: 0,
            out: MelSpectrogram::default(),
        }
    }

    /// Samples pushed so far.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Adds samples and computes every frame they complete.
    pub fn push(&mut self, samples: &[f32]) {
        self.samples += samples.len();
        self.pending.extend_from_slice(samples);
        while self.pending.len() - self.pos >= FRAME_SIZE {
            self.compute_frame();
        }
        // Keep the buffer short: drop what no frame needs any more.
        if self.pos > 8 * FRAME_SIZE {
            self.pending.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Moves out the frames computed since the last call (streaming: the caller keeps
    /// only what it still needs).
    pub fn take(&mut self) -> Vec<f32> {
        std::mem::take(&mut self.out.data)
    }

    /// Pads the end with zeros up to Essentia's frame count and returns all frames (with
    /// [`MelFrames::take`]: the frames not taken yet, with `frames` still the total).
    pub fn finish(mut self) -> MelSpectrogram {
        let total = frame_count(self.samples);
        while self.out.frames < total {
            let have = self.pending.len() - self.pos;
            if have < FRAME_SIZE {
                self.pending.resize(self.pos + FRAME_SIZE, 0.0);
            }
            self.compute_frame();
        }
        self.out.samples = self.samples;
        self.out
    }

    fn compute_frame(&mut self) {
        let frame = &self.pending[self.pos..self.pos + FRAME_SIZE];
        for ((dst, &x), &w) in self.fft_in.iter_mut().zip(frame).zip(self.window) {
            *dst = x * w;
        }
        // The lengths are fixed by construction, so the FFT cannot fail.
        let _ = self.fft.process_with_scratch(
            &mut self.fft_in,
            &mut self.fft_out,
            &mut self.fft_scratch,
        );
        for (p, c) in self.power.iter_mut().zip(&self.fft_out) {
            *p = c.re * c.re + c.im * c.im;
        }
        let start = self.out.data.len();
        self.out.data.resize(start + BANDS, 0.0);
        let bands = &mut self.out.data[start..];
        self.filterbank.apply(&self.power, bands);
        for b in bands.iter_mut() {
            *b = (1.0 + 10_000.0 * *b).log10();
        }
        self.out.frames += 1;
        self.pos += HOP;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_patch_counts_follow_the_formulas() {
        assert_eq!(frame_count(0), 0);
        assert_eq!(frame_count(1), 2);
        assert_eq!(frame_count(256), 2);
        assert_eq!(frame_count(257), 3);
        assert_eq!(patch_count(186), 0);
        assert_eq!(patch_count(187), 1);
        assert_eq!(patch_count(279), 1);
        assert_eq!(patch_count(280), 2);
        assert_eq!(format!("{:.2}", min_patch_seconds()), "2.99");
    }

    #[test]
    fn streaming_in_any_chunks_gives_the_same_frames() {
        let signal: Vec<f32> = (0..20_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut whole = MelFrames::new();
        whole.push(&signal);
        let whole = whole.finish();
        let mut chunked = MelFrames::new();
        for c in signal.chunks(333) {
            chunked.push(c);
        }
        let chunked = chunked.finish();
        assert_eq!(whole.frames, frame_count(signal.len()));
        assert_eq!(whole.data, chunked.data);
    }

    #[test]
    fn filterbank_triangles_have_unit_area_in_hz() {
        let fb = MelFilterbank::new();
        let bin_hz = f64::from(SAMPLE_RATE) / FRAME_SIZE as f64;
        // Wide high bands are sampled finely enough that the Riemann sum is close to 1.
        for band in 60..BANDS {
            let area: f64 = (0..BINS)
                .map(|b| f64::from(fb.weight(band, b)) * bin_hz)
                .sum();
            assert!((area - 1.0).abs() < 0.05, "band {band} area {area}");
        }
    }
}
