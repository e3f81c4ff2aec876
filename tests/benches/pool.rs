//! Pool benchmark: `ingest` of the corpus x4 (24 jobs, ~83 min of audio) with one child and
//! with `--workers auto`; prints x realtime for each, the scaling efficiency, IPC overhead
//! per job, and the peak RSS of the supervisor and of a child (from ingest's summary).
//!
//! Run: `cargo bench -p chaarfm-tests --bench pool [-- --engine patch|shared]` (after
//! `cargo build --release`).
use chaarfm_tests::bench::{corpus_copies, ingest};
use chaarfm_tests::TempDir;

fn main() -> anyhow::Result<()> {
    let dir = TempDir::new("bench-pool");
    let files = corpus_copies(&dir, 4)?;
    let args: Vec<String> = std::env::args().collect();
    let engine = args
        .iter()
        .position(|a| a == "--engine")
        .and_then(|i| args.get(i + 1))
        .map_or("shared", String::as_str);
    println!("{} jobs, --engine {engine}", files.len());
    let one = ingest(&files, "1", engine, &dir)?;
    let auto = ingest(&files, "auto", engine, &dir)?;
    println!(
        "--workers 1:    {:6.1}x realtime, {:6.1} s",
        one.xrt, one.wall_s
    );
    println!(
        "--workers auto: {:6.1}x realtime, {:6.1} s",
        auto.xrt, auto.wall_s
    );
    println!(
        "scaling: {:.2}x with auto (target >= 1.9x on 2 cores)",
        auto.xrt / one.xrt
    );
    println!(
        "IPC overhead: {:.2} ms/job with 1 child, {:.2} ms/job with auto (target < 1 ms)",
        one.ipc_overhead_ms, auto.ipc_overhead_ms
    );
    println!(
        "supervisor peak RSS: {:.1} MB (target <= 30); child peak RSS: {:.1} MB (target <= 150)",
        one.supervisor_mb.max(auto.supervisor_mb),
        one.child_mb.max(auto.child_mb)
    );
    Ok(())
}
