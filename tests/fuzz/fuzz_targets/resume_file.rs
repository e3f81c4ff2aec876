//! `ingest --out` read back to resume: any bytes, read in pieces of any size, give the
//! same set of done files, never a panic.
#![no_main]
use chaarfm_shared::record::done_files;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = done_files(&mut &data[..]).expect("reading a slice cannot fail");
    let cap = 1 + data.first().copied().unwrap_or(0) as usize;
    let mut small = std::io::BufReader::with_capacity(cap, data);
    let pieces = done_files(&mut small).expect("reading a slice cannot fail");
    assert_eq!(whole, pieces);
});
