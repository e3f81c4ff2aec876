//! Roofline benchmark (issue 26): how close the pool comes to this machine's arithmetic
//! ceiling, and where a child's time goes.
//!
//! 1. One core's fp32 rates: a 4096x4096 SGEMM by `matrixmultiply` 0.3 (its AVX-512 16x16
//!    kernel when the CPU has avx512f, else its FMA/AVX2 8x8 one) and by ONNX Runtime's
//!    MatMul (MLAS), best of 3 each; ORT's own Conv on the model's two timbral shapes
//!    (`Conv__134`, `Conv__123`) over 4,096 frames, cut from the model; and the FMA roof
//!    (register-only fused multiply-adds). The ceiling's rate is the fastest kernel
//!    measured; the FMA roof bounds every kernel.
//! 2. The model's arithmetic: every Conv and MatMul of the models the engines run (the
//!    published one; the shared engine's four, made by `graph::shared_engine` as a child
//!    makes them), counted by `graph::Model::mac_sites` from the weights' shapes, times
//!    the output shapes one ORT run reports. Per audio second: 62.5 frames, 62.5/93
//!    patches. The ceiling counts the model's own MACs (channels unpadded, block 1); the
//!    MACs of the channels the engine pads to its NCHWc block are printed beside them.
//! 3. The pool: `ingest` of the corpus x4 with `--workers 1` and `--workers auto`.
//! 4. Ceiling = cores x share x rate / MACs per audio second (in x realtime), where share
//!    is what the FMA roof on all cores at once gives of cores x its one-core figure (below
//!    1 when virtual CPUs share a core's FMA units); efficiency = achieved / ceiling, at
//!    the fastest kernel's rate, the slower timbral conv's and the FMA roof. The share is
//!    measured again after the pool, and the efficiency takes the larger: on a shared host
//!    a neighbour's burst during one measurement lowers it (66% once on a host that gives
//!    100% otherwise, which put the pool at 105% of its ceiling), and nothing raises it.
//!    The kernels are also measured just before and just after the auto run, and the
//!    efficiency is printed against their mean and against the fastest rate seen: the
//!    host's speed moves 10-20% over minutes (71% and 84% of the start's ceiling in two
//!    runs of the same code an hour apart).
//! 5. One child's time, split, from the `--workers 1` run itself: decode, resample, mel,
//!    inference and the rest of each job from the child's own timings (ingest's "children
//!    busy" line), IPC as the pool measured it, idle the wall time left; the inference
//!    divided into front-end, edges, splice and rest in the proportions `Musicnn::stages`
//!    gives for the shared engine in-process on the corpus. (An in-process run made at
//!    another moment cannot give IPC and idle by subtraction: this host moves 20% between
//!    runs, which that difference took for idle time.)
//!
//! Run: `cargo bench -p chaarfm-tests --bench roofline` (after `cargo build --release`).
//! Options: `--no-pool` (skip 3; the split is then in-process only).
use std::time::Instant;

use anyhow::Context;
use chaarfm_child::features::{BANDS, HOP, PATCH_FRAMES, PATCH_HOP, SAMPLE_RATE};
use chaarfm_child::graph::{self, Cut, Dim, Model, Port};
use chaarfm_child::{model, pipeline, runtime, Engine, InferOptions, Musicnn};
use chaarfm_tests::bench::{corpus_copies, ingest, macs, run, session, total, Feeds};
use chaarfm_tests::{corpus_dir, references, TempDir};

const GEMM_N: usize = 4096;
const CONV_FRAMES: usize = 4096;

/// Best of 3 timed runs after a warm-up, in seconds.
fn best_of_3(mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        best = best.min(f()?);
    }
    Ok(best)
}

/// The fp32 FMA roof in GMAC/s of `threads` cores at once: independent fused
/// multiply-adds on registers only (12 chains hide the FMA latency on two ports), the
/// bound no kernel can pass. Run on every core at once, it shows whether they share FMA
/// units (virtual CPUs that are hyperthreads of one core do).
#[cfg(target_arch = "x86_64")]
fn fma_roof(threads: usize) -> Option<f64> {
    use std::arch::x86_64::*;
    const CHAINS: usize = 12;
    const ITERS: usize = 50_000_000;
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512() -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..ITERS {
            for r in &mut acc {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        acc.iter().map(|r| _mm512_reduce_add_ps(*r)).sum()
    }
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2() -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..ITERS {
            for r in &mut acc {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let mut out = [0f32; 8];
        let mut total = 0.0;
        for r in acc {
            // SAFETY: `out` holds the 8 floats an unaligned store writes.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), r) };
            total += out.iter().sum::<f32>();
        }
        total
    }
    let (lanes, run): (usize, fn() -> f32) = if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has avx512f (checked just above).
        (16, || unsafe { avx512() })
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has avx2 and fma (checked just above).
        (8, || unsafe { avx2() })
    } else {
        return None;
    };
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| std::hint::black_box(run()));
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    Some((threads * ITERS * CHAINS * lanes) as f64 / best / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_roof(_threads: usize) -> Option<f64> {
    None
}

/// Whether the CPU has AVX-512 (matrixmultiply's 16x16 kernel).
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn sgemm_matrixmultiply() -> f64 {
    let n = GEMM_N;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut c = vec![0f32; n * n];
    let once = |c: &mut [f32]| {
        let t = Instant::now();
        // SAFETY: a, b and c are n x n row-major buffers, so every index the strides
        // (row n, column 1) reach is inside them; c does not alias a or b.
        unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                a.as_ptr(),
                n as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        t.elapsed().as_secs_f64()
    };
    once(&mut c);
    (0..3).map(|_| once(&mut c)).fold(f64::INFINITY, f64::min)
}

/// The model's convolution `conv` alone, over a free number of frames: its input is the
/// reshaped, normalized patch `[1, 1, T, 96]`, its output `[1, O, T, W]`.
fn conv_alone(
    published: &Model,
    conv: &str,
    input: &str,
    filters: i64,
    width: i64,
) -> anyhow::Result<Vec<u8>> {
    let cut = Cut {
        inputs: vec![Port {
            name: input.to_string(),
            dims: vec![
                Dim::Fixed(1),
                Dim::Fixed(1),
                Dim::Free("time"),
                Dim::Fixed(BANDS as i64),
            ],
        }],
        outputs: vec![Port {
            name: format!("{conv}:0"),
            dims: vec![
                Dim::Fixed(1),
                Dim::Fixed(filters),
                Dim::Free("time"),
                Dim::Fixed(width),
            ],
        }],
        pass_through: vec![],
    };
    Ok(published.extract(&cut)?.to_bytes())
}

/// One core's dense fp32 rates in GMAC/s, best of 3 each.
struct Rates {
    matrixmultiply: f64,
    ort_gemm: f64,
    convs: Vec<(&'static str, f64)>,
}

impl Rates {
    fn conv_min(&self) -> f64 {
        self.convs.iter().map(|c| c.1).fold(f64::INFINITY, f64::min)
    }

    /// The ceiling's rate: the fastest kernel measured (a GEMM crate that does not reach
    /// the hardware must not lower the ceiling below what ORT's own convolutions achieve).
    fn peak(&self) -> f64 {
        let conv_max = self.convs.iter().map(|c| c.1).fold(0.0, f64::max);
        self.matrixmultiply.max(self.ort_gemm).max(conv_max)
    }

    fn print(&self) {
        let kernel = if has_avx512() {
            "AVX-512 16x16"
        } else {
            "FMA/AVX2 8x8"
        };
        println!(
            "SGEMM {GEMM_N}^3, 1 thread: matrixmultiply ({kernel} kernel) {:.1} GMAC/s",
            self.matrixmultiply
        );
        println!(
            "SGEMM {GEMM_N}^3, 1 thread: ONNX Runtime MatMul (MLAS) {:.1} GMAC/s",
            self.ort_gemm
        );
        for (conv, rate) in &self.convs {
            println!("ONNX Runtime Conv {conv} over {CONV_FRAMES} frames: {rate:.1} GMAC/s");
        }
    }
}

/// The kernels behind [`Rates`], made once so they can be measured again around the pool.
struct Kernels {
    gemm: ort::session::Session,
    convs: Vec<(&'static str, ort::session::Session, Feeds, f64)>,
}

impl Kernels {
    fn new(published: &Model, m: &model::Manifest) -> anyhow::Result<Self> {
        let gemm = session(&published.gemm(GEMM_N as i64).to_bytes())?;
        let input = m.shared.pinned_reshape.clone() + ":0";
        let mut convs = Vec::new();
        for (conv, width) in [("Conv__134", 59), ("Conv__123", 30)] {
            let c = conv_alone(published, conv, &input, m.shared.channels as i64, width)?;
            let feeds: Feeds = vec![(input.clone(), vec![1, 1, CONV_FRAMES, BANDS])];
            let work = total(&macs(&c, &feeds)?);
            convs.push((conv, session(&c)?, feeds, work));
        }
        Ok(Self { gemm, convs })
    }

    fn measure(&mut self) -> anyhow::Result<Rates> {
        let gemm_macs = (GEMM_N as f64).powi(3);
        let feeds: Feeds = ["A", "B"]
            .map(|n| (n.to_string(), vec![GEMM_N, GEMM_N]))
            .into();
        let gemm = &mut self.gemm;
        let ort_gemm = gemm_macs / best_of_3(|| Ok(run(gemm, &feeds)?.0))? / 1e9;
        let mut convs = Vec::new();
        for (conv, s, feeds, work) in &mut self.convs {
            convs.push((*conv, *work / best_of_3(|| Ok(run(s, feeds)?.0))? / 1e9));
        }
        Ok(Rates {
            matrixmultiply: gemm_macs / sgemm_matrixmultiply() / 1e9,
            ort_gemm,
            convs,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let with_pool = !args.iter().any(|a| a == "--no-pool");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    println!(
        "host: {cpu}, {cores} cores, ONNX Runtime {}",
        runtime::version().unwrap_or_default()
    );

    // 1. Peaks.
    let path = model::resolve(None)?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let published = Model::parse(&bytes)?;
    let m = model::manifest();
    let mut kernels = Kernels::new(&published, m)?;
    let rates = kernels.measure()?;
    rates.print();
    let roof = fma_roof(1);
    // What all cores at once give of `cores` x one core's roof (1.0: nothing shared).
    let mut share = 1.0;
    match (roof, fma_roof(cores)) {
        (Some(one), Some(all)) => {
            share = (all / (cores as f64 * one)).min(1.0);
            println!(
                "FMA roof (registers only): {one:.1} GMAC/s on 1 thread, {all:.1} on {cores} at once ({:.0}% of {cores} x 1)",
                share * 100.0
            );
        }
        _ => println!("FMA roof: not measured on this CPU"),
    }
    let (peak, conv_rate) = (rates.peak(), rates.conv_min());

    // 2. The model's arithmetic per audio second.
    let frames_per_s = f64::from(SAMPLE_RATE) / HOP as f64;
    let patches_per_s = frames_per_s / PATCH_HOP as f64;
    let patch_feed: Feeds = vec![(m.input.clone(), vec![1, PATCH_FRAMES, BANDS])];
    let full = macs(&bytes, &patch_feed)?;
    println!(
        "\nMACs per patch, published model: {:.1} M",
        total(&full) / 1e6
    );
    for (node, n) in &full {
        println!(
            "  {node:28} {:8.1} M  {:5.2}%",
            *n as f64 / 1e6,
            *n as f64 * 100.0 / total(&full)
        );
    }
    let per_patch_engine = total(&full) * patches_per_s;
    let block = chaarfm_child::infer::nchwc_block();
    // The shared engine's MACs per audio second with its channels padded to `block`, and
    // split: (timbral once per frame, patch edges, per-patch rest).
    let shared_macs = |block: usize, winograd_tile: usize| -> anyhow::Result<(f64, [f64; 3])> {
        let mut m = m.clone();
        m.shared.winograd_tile = winograd_tile;
        let m = &m;
        let derived = graph::shared_engine(&bytes, m, block)?;
        let (ch, halo) = (m.shared.channels, m.shared.halo);
        let chunk = 128;
        let front_feed: Feeds = vec![(m.shared.raw.clone(), vec![1, 1, chunk + 2 * halo, BANDS])];
        let front = total(&macs(&derived.front, &front_feed)?) / chunk as f64 * frames_per_s;
        let edge_feed: Feeds = vec![(m.shared.raw.clone(), vec![1, 1, 2 * halo, BANDS])];
        let edges = (total(&macs(&derived.head, &edge_feed)?)
            + total(&macs(&derived.tail, &edge_feed)?))
            * patches_per_s;
        let mut rest_feed: Feeds = vec![(m.shared.raw.clone(), vec![1, 1, PATCH_FRAMES, BANDS])];
        rest_feed.extend(
            m.shared
                .timbral
                .iter()
                .map(|t| (t.clone(), vec![1, ch, PATCH_FRAMES])),
        );
        let rest = total(&macs(&derived.rest, &rest_feed)?) * patches_per_s;
        Ok((front + edges + rest, [front, edges, rest]))
    };
    // The ceiling counts the model's own MACs (the 580.8 M): the zero channels the
    // engine pads to its block are work it chose, not work the model needs, and counting
    // them would flatter the efficiency by the padding (7% with AVX-512). Nor does it
    // count the fewer the engine does with its timbral convolutions as Winograd tiles:
    // the efficiency is then of the model's arithmetic, and may pass 100%.
    let (shared_engine, [front, edges, rest]) = shared_macs(1, 0)?;
    let (padded, _) = shared_macs(block, 0)?;
    let tile = m.shared.winograd_tile;
    let (as_run, [front_run, ..]) = shared_macs(block, tile)?;
    println!(
        "MACs per audio second: per-patch engine {:.1} M; shared engine {:.1} M (timbral once per frame {:.1}, patch edges {:.1}, the per-patch rest {:.1}); with channels padded to {block}: {:.1} M ({:+.1}%); as run, the timbral front-end in Winograd tiles of {tile} frames: {:.1} M (front-end {:.1} M)",
        per_patch_engine / 1e6,
        shared_engine / 1e6,
        front / 1e6,
        edges / 1e6,
        rest / 1e6,
        padded / 1e6,
        (padded / shared_engine - 1.0) * 100.0,
        as_run / 1e6,
        front_run / 1e6,
    );
    // All cores, each at the one-core rate scaled by what running on all of them at once
    // leaves (the FMA roof's share).
    let ceiling_at = |rate: f64, share: f64| cores as f64 * share * rate * 1e9 / shared_engine;
    let ceiling = |rate: f64| ceiling_at(rate, share);
    println!(
        "ceiling of the shared engine on {cores} cores (x {share:.2} for running at once): {:.1}x realtime at the fastest measured kernel ({peak:.1} GMAC/s), {:.1}x at ORT's slower timbral conv ({conv_rate:.1} GMAC/s)",
        ceiling(peak),
        ceiling(conv_rate)
    );
    if let Some(r) = roof {
        println!("  and {:.1}x at the FMA roof ({r:.1} GMAC/s)", ceiling(r));
    }

    // 5 (compute part). One child's split, in-process.
    let mut shared = Musicnn::load(
        &path,
        &InferOptions {
            engine: Engine::Shared,
            ..Default::default()
        },
    )?;
    let names: Vec<String> = references()
        .into_iter()
        .filter(|(_, r)| r.vector.is_some())
        .map(|(n, _)| n)
        .collect();
    pipeline::embed_file(&corpus_dir().join(&names[0]), &mut shared)?; // warm-up
    let before = shared
        .stages()
        .context("the shared engine reports stages")?;
    let (mut decode, mut resample, mut mel, mut infer, mut audio) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for name in &names {
        let e = pipeline::embed_file(&corpus_dir().join(name), &mut shared)?;
        decode += e.timings.decode_ms;
        resample += e.timings.resample_ms;
        mel += e.timings.features_ms;
        infer += e.timings.infer_ms;
        audio += e.duration_s;
    }
    let after = shared
        .stages()
        .context("the shared engine reports stages")?;
    let stage = |f: fn(&chaarfm_child::infer::Stages) -> f64| f(&after) - f(&before);
    let (front, edges_ms, splice, rest_ms) = (
        stage(|s| s.front_ms),
        stage(|s| s.edges_ms),
        stage(|s| s.splice_ms),
        stage(|s| s.rest_ms),
    );
    let other = infer - front - edges_ms - splice - rest_ms;
    let compute = decode + resample + mel + infer;

    // 3. The pool.
    let mut pool = None;
    if with_pool {
        let dir = TempDir::new("bench-roofline");
        let files = corpus_copies(&dir, 4)?;
        println!("\npool: {} jobs", files.len());
        let one = ingest(&files, "1", "shared", &dir)?;
        // The kernels again just before and after the auto run: this host's speed moves
        // by 10-20% over minutes, so a ceiling measured at the start is not the one the
        // pool ran under.
        let before = kernels.measure()?;
        let auto = ingest(&files, "auto", "shared", &dir)?;
        let after = kernels.measure()?;
        pool = Some((one, auto, before, after));
    }
    let achieved = pool
        .as_ref()
        .map(|(one, auto, before, after)| (one.xrt, auto.xrt, before.peak(), after.peak()));

    // 5. The split. With the pool, from the `--workers 1` run itself (the child's own
    // timings, the IPC the pool measured, the rest of the wall time idle), the inference
    // divided among the engine's stages as in-process; else in-process alone.
    let inference = [
        ("front-end", front),
        ("edges", edges_ms),
        ("splice", splice),
        ("rest", rest_ms),
        ("stream bookkeeping", other),
    ];
    let mut rows: Vec<(&str, f64)> = Vec::new();
    match &pool {
        Some((one, auto, _, _)) => {
            let b = &one.busy;
            let idle = (one.wall_s - b.total - b.ipc).max(0.0);
            println!(
                "\none child's time in the --workers 1 run ({:.0} s of audio in {:.1} s), stages from the child's own timings, inference split as in-process:",
                one.xrt * one.wall_s,
                one.wall_s
            );
            rows.extend([
                ("decode", b.decode * 1e3),
                ("resample", b.resample * 1e3),
                ("mel", b.mel * 1e3),
            ]);
            rows.extend(inference.map(|(w, ms)| (w, b.inference * 1e3 * ms / infer)));
            rows.extend([
                ("other in a job", b.other * 1e3),
                ("IPC", b.ipc * 1e3),
                ("idle", idle * 1e3),
            ]);
            println!(
                "  (--workers auto: children busy {:.1} s of {:.1} s x its children)",
                auto.busy.total, auto.wall_s
            );
        }
        None => {
            println!(
                "\none child's time on the corpus ({audio:.0} s of audio), in-process (--no-pool):"
            );
            rows.extend([("decode", decode), ("resample", resample), ("mel", mel)]);
            rows.extend(inference);
        }
    }
    let all: f64 = rows.iter().map(|(_, ms)| ms).sum();
    for (what, ms) in rows {
        println!("  {what:20} {ms:9.1} ms  {:5.1}%", ms * 100.0 / all);
    }
    println!(
        "  in-process: {:.1}x realtime on one core",
        audio * 1e3 / compute
    );

    if let Some((one, auto, before, after)) = achieved {
        println!("\nachieved: {one:.1}x realtime with 1 child, {auto:.1}x with --workers auto");
        // The share once more, after the pool: the larger of the two is the host's.
        let mut share = share;
        if let (Some(one), Some(all)) = (fma_roof(1), fma_roof(cores)) {
            let again = (all / (cores as f64 * one)).min(1.0);
            println!(
                "FMA roof on {cores} at once, measured again after the pool: {:.0}% of {cores} x 1 (before: {:.0}%; the ceiling takes the larger)",
                again * 100.0,
                share * 100.0
            );
            share = share.max(again);
        }
        let ceiling = |rate: f64| ceiling_at(rate, share);
        println!(
            "efficiency (auto / ceiling): {:.1}% of the fastest-kernel ceiling (target >= 75%), {:.1}% of ORT's conv ceiling",
            auto * 100.0 / ceiling(peak),
            auto * 100.0 / ceiling(conv_rate)
        );
        let around = (before + after) / 2.0;
        println!(
            "  fastest kernel just before / after the auto run: {before:.1} / {after:.1} GMAC/s (at the start: {peak:.1}); against their mean, {:.1}% of the ceiling; against the fastest rate seen in this run ({:.1}), {:.1}%",
            auto * 100.0 / ceiling(around),
            peak.max(before).max(after),
            auto * 100.0 / ceiling(peak.max(before).max(after))
        );
        if let Some(r) = roof {
            println!(
                "  {:.1}% of the FMA-roof ceiling",
                auto * 100.0 / ceiling(r)
            );
        }
        println!(
            "  counting the padded channels' MACs as work (as this bench did before), {:.1}% of the fastest-kernel ceiling",
            auto * 100.0 / ceiling(peak) * padded / shared_engine
        );
    }
    Ok(())
}
