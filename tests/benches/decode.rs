//! Decoding benchmark (issue 26, item 3): symphonia, as a child decodes, against ffmpeg
//! (the fallback's subprocess: `child::ffmpeg::FfmpegStream`, process start included), on
//! each corpus file. Both give mono at the source rate through the same downmix; printed
//! per file: ms per second of audio for each (best of 3, alternating), the ratio, and how
//! far apart their samples are (max abs difference over the common length, and the two
//! lengths: decoders differ in priming and padding), so a faster decoder would also show
//! whether it gives the same samples. One thread each: ffmpeg's audio decoders are
//! single-threaded, and a child has one core. Last column: resampling the decoded samples
//! to 16 kHz as a child does (`child::resample`, in 4,096-sample chunks, best of 3), the
//! step that comes next in a child.
//!
//! Run: `cargo bench -p chaarfm-tests --bench decode` (needs ffmpeg on PATH).
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use chaarfm_child::decode::{downmix, AudioStream};
use chaarfm_child::ffmpeg::FfmpegStream;
use chaarfm_child::resample::Resampler;
use chaarfm_tests::{corpus_dir, references};

/// Decodes `path` with symphonia to mono: samples, rate, seconds taken.
fn symphonia(path: &Path) -> anyhow::Result<(Vec<f32>, u32, f64)> {
    let start = Instant::now();
    let mut stream = AudioStream::open(path)?;
    let (mut all, mut chunk) = (Vec::new(), Vec::new());
    while stream.next_chunk(&mut chunk)? {
        all.extend_from_slice(&chunk);
    }
    Ok((all, stream.sample_rate(), start.elapsed().as_secs_f64()))
}

/// Decodes `path` with an ffmpeg subprocess to mono: samples, rate, seconds taken.
fn ffmpeg(ffmpeg: &Path, path: &Path) -> anyhow::Result<(Vec<f32>, u32, f64)> {
    let start = Instant::now();
    let mut stream = FfmpegStream::open(ffmpeg, path, "benchmark")?;
    let (mut all, mut interleaved) = (Vec::new(), Vec::new());
    while stream.next_interleaved(&mut interleaved)? {
        downmix(&interleaved, stream.channels, &mut all);
    }
    Ok((all, stream.sample_rate, start.elapsed().as_secs_f64()))
}

/// The offset of `b` against `a` (within ±4,096 samples, found on a window of the music)
/// and the max abs difference of their common samples at it: decoders that keep or drop
/// priming samples differently give the same music shifted.
fn aligned_diff(a: &[f32], b: &[f32]) -> (isize, f32) {
    let (from, len) = (a.len().min(b.len()) / 3, 16_384);
    let window_diff = |lag: isize| -> f64 {
        (from..from + len)
            .map(|i| f64::from((a[i] - b[(i as isize + lag) as usize]).abs()))
            .sum()
    };
    let lag = (-4096..=4096isize)
        .filter(|l| from as isize + l >= 0 && ((from + len) as isize + l) < b.len() as isize)
        .min_by(|x, y| window_diff(*x).total_cmp(&window_diff(*y)))
        .unwrap_or(0);
    let diff = (0..a.len())
        .filter_map(|i| Some((a[i], *b.get(usize::try_from(i as isize + lag).ok()?)?)))
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    (lag, diff)
}

/// Seconds to resample `samples` at `rate` to 16 kHz, best of 3.
fn resample(samples: &[f32], rate: u32) -> anyhow::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let mut r = Resampler::new(rate)?;
        let mut n = 0;
        for chunk in samples.chunks(4096) {
            r.process(chunk, |y| n += y.len());
        }
        r.finish(|y| n += y.len());
        best = best.min(start.elapsed().as_secs_f64());
        anyhow::ensure!(n > 0, "no samples out of the resampler");
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    let ff = chaarfm_child::ffmpeg::find()
        .context("ffmpeg is not on PATH: this benchmark compares against it")?;
    println!(
        "{:20} {:>6} {:>11} {:>11} {:>7} {:>12} {:>6} {:>19} {:>11}",
        "file",
        "kHz",
        "symphonia",
        "ffmpeg",
        "ratio",
        "max |diff|",
        "lag",
        "samples sym/ffmpeg",
        "resample"
    );
    println!(
        "{:20} {:>6} {:>11} {:>11} {:>48}",
        "", "", "ms/audio s", "ms/audio s", "ms/audio s"
    );
    let (mut total_sym, mut total_ff, mut total_s, mut total_rs) = (0.0, 0.0, 0.0, 0.0);
    for (name, r) in references() {
        if r.vector.is_none() {
            continue;
        }
        let path = corpus_dir().join(&name);
        let (mut best_sym, mut best_ff) = (f64::MAX, f64::MAX);
        let (mut a, mut b, mut rate) = (Vec::new(), Vec::new(), 0);
        for _ in 0..3 {
            let (s, r, t) = symphonia(&path)?;
            best_sym = best_sym.min(t);
            (a, rate) = (s, r);
            let (s, r, t) = ffmpeg(&ff, &path)?;
            best_ff = best_ff.min(t);
            anyhow::ensure!(r == rate, "{name}: ffmpeg says {r} Hz, symphonia {rate} Hz");
            b = s;
        }
        let seconds = a.len() as f64 / f64::from(rate);
        let (lag, diff) = aligned_diff(&a, &b);
        let per = |t: f64| t * 1e3 / seconds;
        let rs = resample(&a, rate)?;
        let lengths = format!("{}/{}", a.len(), b.len());
        println!(
            "{name:20} {:>6.1} {:>11.2} {:>11.2} {:>6.2}x {diff:>12.2e} {lag:>6} {lengths:>19} {:>11.2}",
            f64::from(rate) / 1e3,
            per(best_sym),
            per(best_ff),
            best_ff / best_sym,
            per(rs),
        );
        (total_sym, total_ff, total_s, total_rs) = (
            total_sym + best_sym,
            total_ff + best_ff,
            total_s + seconds,
            total_rs + rs,
        );
    }
    println!(
        "{:20} {:>6} {:>11.2} {:>11.2} {:>6.2}x {:>46.2}  (ratio: ffmpeg time / symphonia time)",
        "all",
        "",
        total_sym * 1e3 / total_s,
        total_ff * 1e3 / total_s,
        total_ff / total_sym,
        total_rs * 1e3 / total_s
    );
    Ok(())
}
