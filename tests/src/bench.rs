//! What the pool and roofline benchmarks share: the corpus as a batch of distinct jobs,
//! one `chaarfm-super ingest` run read back from its summary, and a model's MACs.
use std::path::PathBuf;
use std::time::Instant;

use chaarfm_child::graph::Model;
use chaarfm_child::runtime;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

use crate::{binary, corpus_dir, references, TempDir};

/// Each decodable corpus file `copies` times under distinct paths (so each copy is a
/// job of its own), in `dir`.
pub fn corpus_copies(dir: &TempDir, copies: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for copy in 0..copies {
        for (name, r) in references() {
            if r.vector.is_none() {
                continue;
            }
            let link = dir.join(&format!("{copy}-{name}"));
            std::fs::copy(corpus_dir().join(&name), &link)?;
            files.push(link);
        }
    }
    Ok(files)
}

/// An ingest run, as its summary reports it.
pub struct Ingest {
    /// Audio seconds per wall second.
    pub xrt: f64,
    pub wall_s: f64,
    pub supervisor_mb: f64,
    pub child_mb: f64,
    pub ipc_overhead_ms: f64,
    /// The children's own time, from their per-job timings (the summary's "children
    /// busy" line), in seconds.
    pub busy: Busy,
}

/// Where the children's time went in one ingest run, in seconds.
pub struct Busy {
    /// Receiving each job to replying, summed over jobs.
    pub total: f64,
    pub decode: f64,
    pub resample: f64,
    pub mel: f64,
    pub inference: f64,
    /// In a job but in no stage: reading the file's tags, replying.
    pub other: f64,
    /// Dispatch to result minus the child's own time, summed over jobs.
    pub ipc: f64,
}

/// `chaarfm-super ingest --workers W --engine E` on `files`; prints its summary.
pub fn ingest(
    files: &[PathBuf],
    workers: &str,
    engine: &str,
    dir: &TempDir,
) -> anyhow::Result<Ingest> {
    let out = dir.join(&format!("out-{workers}.jsonl"));
    let _ = std::fs::remove_file(&out);
    let o = std::process::Command::new(binary())
        .args(["ingest", "--workers", workers, "--engine", engine, "--out"])
        .arg(&out)
        .args(files)
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "ingest failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    print!("{s}");
    Ok(Ingest {
        xrt: number_after(&s, "s = "),
        wall_s: number_after(&s, "of audio in "),
        supervisor_mb: number_after(&s, "supervisor peak RSS "),
        child_mb: number_after(&s, "child peak RSS "),
        ipc_overhead_ms: number_after(&s, "IPC overhead "),
        busy: {
            let line = s
                .lines()
                .find(|l| l.starts_with("ingest: children busy"))
                .unwrap_or("");
            Busy {
                total: number_after(line, "children busy "),
                decode: number_after(line, "decode "),
                resample: number_after(line, "resample "),
                mel: number_after(line, "mel "),
                inference: number_after(line, "inference "),
                other: number_after(line, "other "),
                ipc: number_after(line, "IPC "),
            }
        },
    })
}

/// The number right after `key` in `text` (NaN when absent).
fn number_after(text: &str, key: &str) -> f64 {
    text.split(key)
        .nth(1)
        .and_then(|s| {
            s.trim_start()
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()
        })
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A one-thread session, optimized as the child's are.
pub fn session(bytes: &[u8]) -> anyhow::Result<Session> {
    let env = runtime::environment()?;
    Ok(Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_threads(1)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_inter_threads(1)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .commit_from_memory(bytes)?)
}

/// Graph inputs by name, with their shapes.
pub type Feeds = Vec<(String, Vec<usize>)>;

/// Runs `s` once on inputs of the given shapes (values only fill them: no shape here
/// depends on them), returning the seconds it took.
pub fn run<'s>(
    s: &'s mut Session,
    feeds: &Feeds,
) -> anyhow::Result<(f64, ort::session::SessionOutputs<'s>)> {
    let inputs: Vec<(String, ort::value::DynValue)> = feeds
        .iter()
        .map(|(name, shape)| {
            let data = vec![0.5f32; shape.iter().product()];
            Ok((
                name.clone(),
                Tensor::from_array((shape.clone(), data))?.into_dyn(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    let out = s.run(inputs)?;
    Ok((t.elapsed().as_secs_f64(), out))
}

/// The MACs one run of `bytes` on `feeds` does, per node.
pub fn macs(bytes: &[u8], feeds: &Feeds) -> anyhow::Result<Vec<(String, u64)>> {
    let m = Model::parse(bytes)?;
    let sites = m.mac_sites()?;
    let outputs: Vec<String> = sites.iter().map(|s| s.output.clone()).collect();
    let mut s = session(&m.exposing(&outputs).to_bytes())?;
    let (_, out) = run(&mut s, feeds)?;
    sites
        .iter()
        .map(|site| {
            let (shape, _) = out[site.output.as_str()].try_extract_tensor::<f32>()?;
            let elements: i64 = shape.iter().product();
            Ok((site.node.clone(), elements as u64 * site.per_element))
        })
        .collect()
}

/// All MACs of a count.
pub fn total(sites: &[(String, u64)]) -> f64 {
    sites.iter().map(|(_, m)| *m as f64).sum()
}
