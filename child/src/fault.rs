//! Test-only fault injection (cargo feature `fault-injection`; release builds leave it out).
//!
//! `CHAARFM_FAULT` holds `kind=pattern` pairs separated by commas; a job whose path
//! contains `pattern` triggers `kind` before any work:
//! `segv` (raise SIGSEGV), `abort`, `exit` (exit status 7), `hang` (sleep forever while the
//! heartbeat thread keeps running), `grow` (allocate and touch 64 MiB every 20 ms),
//! `fatal` (report `Fatal`, as a child whose runtime broke would: see [`fatal_for`]).

/// Whether the job at `path` should make this child report `Fatal` (kind `fatal`).
#[cfg(feature = "fault-injection")]
pub fn fatal_for(path: &str) -> bool {
    std::env::var("CHAARFM_FAULT").is_ok_and(|spec| {
        spec.split(',').any(|pair| {
            pair.split_once('=')
                .is_some_and(|(k, p)| k == "fatal" && !p.is_empty() && path.contains(p))
        })
    })
}

#[cfg(not(feature = "fault-injection"))]
pub fn fatal_for(_path: &str) -> bool {
    false
}

/// Triggers the fault configured for `path`, if any.
#[cfg(feature = "fault-injection")]
pub fn inject(path: &str) {
    let Ok(spec) = std::env::var("CHAARFM_FAULT") else {
        return;
    };
    for pair in spec.split(',') {
        let Some((kind, pattern)) = pair.split_once('=') else {
            continue;
        };
        if pattern.is_empty() || !path.contains(pattern) {
            continue;
        }
        tracing::warn!(kind, path, "fault injection");
        match kind {
            "segv" => segv(),
            "abort" => std::process::abort(),
            "exit" => std::process::exit(7),
            "hang" => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            "grow" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 64 << 20]);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
            _ => {}
        }
    }
}

#[cfg(all(feature = "fault-injection", unix))]
fn segv() {
    // Rust's runtime handles SIGSEGV (stack-overflow detection): for a fault outside a guard
    // page it restores the default action and returns, so the first raise only resets the
    // handler and the second one kills, as a real segfault would.
    for _ in 0..2 {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSEGV);
    }
    std::process::abort();
}

#[cfg(all(feature = "fault-injection", not(unix)))]
fn segv() {
    std::process::abort();
}

#[cfg(not(feature = "fault-injection"))]
pub fn inject(_path: &str) {}
