//! Soak benchmark: 1,000 jobs (4-15 s clips cut from the corpus) through the mock server in
//! each protocol, with a connection drop every 5 s, a child SIGKILL every 2 s, one mock
//! restart and one supervisor SIGKILL+restart; prints jobs lost, stored twice, vectors
//! changed against a calm run, supervisor RSS between job 100 and the end, fd counts and
//! files left in tmp (see `chaarfm_tests::soak`). Exits non-zero if a figure is off.
//!
//! Run: `cargo bench -p chaarfm-tests --bench soak [-- --jobs N]` (after
//! `cargo build --release`); ~15 minutes on 2 cores.
#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the soak uses Linux's /proc and signals: run it on Linux");
}

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    let args: Vec<String> = std::env::args().collect();
    let jobs = args
        .iter()
        .position(|a| a == "--jobs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let began = Instant::now();
    let clips = chaarfm_tests::soak::Clips::make(jobs);
    println!(
        "{jobs} clips cut and embedded calmly in {:.1} s ({:.0} s of audio)",
        began.elapsed().as_secs_f64(),
        clips.audio_s
    );
    let mut bad = Vec::new();
    for protocol2 in [None, Some(4)] {
        let r = chaarfm_tests::soak::run(&clips, protocol2, "auto", Duration::from_secs(1800));
        r.print();
        bad.extend(
            r.problems()
                .into_iter()
                .map(|p| format!("{}: {p}", r.protocol)),
        );
    }
    println!("total {:.1} min", began.elapsed().as_secs_f64() / 60.0);
    anyhow::ensure!(bad.is_empty(), "soak figures off: {bad:?}");
    Ok(())
}
