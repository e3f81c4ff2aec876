//! The soak in CI: 150 jobs through the mock in each protocol, with connection drops, child
//! SIGKILLs, a mock restart and a supervisor SIGKILL+restart (see `chaarfm_tests::soak`);
//! nothing lost, stored twice or changed, no leak. `cargo bench --bench soak` runs 1,000.
#![cfg(target_os = "linux")]

use std::time::Duration;

use chaarfm_tests::soak::{run, Clips};

#[test]
fn soak_150_jobs_in_each_protocol_lose_nothing_and_leak_nothing() {
    let clips = Clips::make(150);
    for protocol2 in [None, Some(4)] {
        let report = run(&clips, protocol2, "auto", Duration::from_secs(600));
        report.print();
        let problems = report.problems();
        assert!(problems.is_empty(), "{}: {problems:?}", report.protocol);
    }
}
