//! A downloaded file, as the child handles it: probe, decode, resample and mel frames,
//! on arbitrary bytes. An error is fine; a panic, a hang (libFuzzer's -timeout) or
//! unbounded memory (-rss_limit_mb, -malloc_limit_mb) is a finding. The first byte picks
//! the file name's extension, the hint the probe gets from a real download's name.
#![no_main]
use libfuzzer_sys::fuzz_target;

const EXTENSIONS: [&str; 8] = ["mp3", "m4a", "ogg", "flac", "wav", "webm", "opus", "bin"];

fuzz_target!(|data: &[u8]| {
    // symphonia's path only: the ffmpeg fallback is another process (fuzzing it would
    // fuzz ffmpeg, and fork for every input).
    std::env::set_var("CHAARFM_FFMPEG", "off");
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("chaarfm-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!(
        "input.{}",
        EXTENSIONS[pick as usize % EXTENSIONS.len()]
    ));
    std::fs::write(&path, bytes).expect("temp dir is writable");
    let _ = chaarfm_child::pipeline::features(&path);
});
