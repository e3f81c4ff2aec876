//! The fallback for formats symphonia cannot decode (WMA, AC3/E-AC3, WavPack, APE,
//! Musepack...): `ffmpeg`, when installed, as a subprocess decoding to raw 32-bit float
//! PCM at the source rate with every channel. Downmix and resampling stay ours, so the
//! numbers follow the same rules as every other format (Essentia's loader is ffmpeg too).
//!
//! Priming samples are kept (`-flags2 +skip_manual`), as Essentia's loader keeps them.
//!
//! The path goes as `file:<absolute path>`, one argument, never parsed as an option.
//! Output is bounded ([`MAX_SECONDS`]); the process is killed when the stream is dropped,
//! and exits by itself on a broken pipe if this child dies first.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::formats::DecodeError;

/// Longest audio decoded through ffmpeg (a 10-hour file is not a track).
pub const MAX_SECONDS: u64 = 4 * 3600;

/// `CHAARFM_FFMPEG` (`off`: no fallback), else `ffmpeg` on `PATH`; `ffprobe` is
/// expected beside it.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHAARFM_FFMPEG").filter(|v| !v.is_empty()) {
        return (p != "off").then(|| PathBuf::from(p));
    }
    crate::layout::on_path("ffmpeg")
}

fn ffprobe_beside(ffmpeg: &Path) -> PathBuf {
    ffmpeg.with_file_name(crate::layout::exe_name("ffprobe"))
}

/// `file:` + the absolute path: an input ffmpeg never reads as an option or a protocol.
fn input_arg(path: &Path) -> std::ffi::OsString {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut s = std::ffi::OsString::from("file:");
    s.push(abs.as_os_str());
    s
}

/// An ffmpeg message without its `[component @ 0xADDRESS] ` prefix.
fn plain(line: &str) -> String {
    let line = line.trim();
    match line.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((tag, rest)) if tag.contains(" @ 0x") => rest.to_string(),
        _ => line.to_string(),
    }
}

/// The first audio stream as ffprobe describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    pub sample_rate: u32,
    pub channels: usize,
    /// ffmpeg's codec name (`wmav2`, `ac3`, `amr_nb`...).
    pub codec: String,
}

/// The first audio stream's rate, channel count and codec, from ffprobe's output.
pub fn parse_probe(text: &str) -> Option<Probed> {
    let mut rate = None;
    let mut channels = None;
    let mut codec = String::new();
    let mut audio = true;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("sample_rate=") {
            rate = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("channels=") {
            channels = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("codec_name=") {
            codec = v.to_string();
        } else if let Some(v) = line.strip_prefix("codec_type=") {
            audio = v == "audio";
        }
    }
    match (rate, channels) {
        (Some(sample_rate), Some(channels)) if sample_rate > 0 && channels > 0 && audio => {
            Some(Probed {
                sample_rate,
                channels,
                codec,
            })
        }
        _ => None,
    }
}

/// Whether ffmpeg's codec `name` is one of the music codecs the README lists (what a
/// library holds): never a speech codec (AMR, GSM, G.72x, Speex...) or anything else
/// ffmpeg may find in bytes that are not music. What passes here the model may see.
pub fn is_music_codec(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "mp1",
        "mp2",
        "mp3",
        "mp3float",
        "mp2float",
        "mp1float",
        "aac",
        "aac_latm",
        "alac",
        "vorbis",
        "opus",
        "flac",
        "wmav1",
        "wmav2",
        "wmapro",
        "wmalossless",
        "ac3",
        "eac3",
        "wavpack",
        "ape",
        "musepack7",
        "musepack8",
        "tta",
        "tak",
        "dts",
        "truehd",
        "mlp",
        "atrac3",
        "atrac3p",
        "atrac9",
        "cook",
    ];
    EXACT.contains(&name) || name.starts_with("pcm_") || name.starts_with("dsd_")
}

/// An ffmpeg process decoding one file.
pub struct FfmpegStream {
    child: Child,
    out: ChildStdout,
    pub sample_rate: u32,
    pub channels: usize,
    bytes: Vec<u8>,
    frames: u64,
    max_frames: u64,
}

impl FfmpegStream {
    /// Starts decoding `path` with `ffmpeg`; `why` is symphonia's refusal, kept for the
    /// error when ffmpeg cannot decode it either.
    pub fn open(ffmpeg: &Path, path: &Path, why: &str) -> Result<FfmpegStream, DecodeError> {
        let cannot = |detail: String| DecodeError::Unreadable(format!("{why}; ffmpeg: {detail}"));
        let probe = Command::new(ffprobe_beside(ffmpeg))
            .args(["-v", "error", "-select_streams", "a:0"])
            .args([
                "-show_entries",
                "stream=sample_rate,channels,codec_name,codec_type",
            ])
            .args(["-of", "default=noprint_wrappers=1"])
            .arg(input_arg(path))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| cannot(format!("ffprobe: {e}")))?;
        let text = String::from_utf8_lossy(&probe.stdout);
        let Probed {
            sample_rate,
            channels,
            codec,
        } = parse_probe(&text).ok_or_else(|| {
            let err = String::from_utf8_lossy(&probe.stderr);
            cannot(plain(err.lines().last().unwrap_or("no audio stream")))
        })?;
        if !is_music_codec(&codec) {
            return Err(cannot(format!(
                "its audio is {codec:?}, not a music codec (speech codecs and streams found in non-audio bytes are refused)"
            )));
        }
        let mut child = Command::new(ffmpeg)
            .args(["-nostdin", "-hide_banner", "-v", "error"])
            // Keep the decoder's priming samples, as Essentia's loader does (as for AAC):
            // measured on WMA, this is its output sample for sample.
            .args(["-flags2", "+skip_manual", "-i"])
            .arg(input_arg(path))
            .args(["-map", "0:a:0", "-vn", "-sn", "-dn"])
            .args(["-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| cannot(format!("ffmpeg: {e}")))?;
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            return Err(cannot("no output pipe".into()));
        };
        Ok(FfmpegStream {
            child,
            out,
            sample_rate,
            channels,
            bytes: Vec::new(),
            frames: 0,
            max_frames: MAX_SECONDS * u64::from(sample_rate),
        })
    }

    /// Appends up to ~64 KiB of interleaved samples to `interleaved` (cleared first);
    /// `false` at the end of the stream.
    pub fn next_interleaved(&mut self, interleaved: &mut Vec<f32>) -> Result<bool, DecodeError> {
        interleaved.clear();
        let frame_bytes = 4 * self.channels;
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = self
                .out
                .read(&mut buf)
                .map_err(|e| DecodeError::NoAudio(format!("reading ffmpeg's output: {e}")))?;
            if n == 0 {
                let status = self.child.wait().ok();
                if self.frames == 0 {
                    return Err(DecodeError::NoAudio(format!(
                        "ffmpeg decoded nothing ({})",
                        status.map_or("exit status unknown".into(), |s| s.to_string())
                    )));
                }
                return Ok(false);
            }
            self.bytes.extend_from_slice(&buf[..n]);
            let whole = self.bytes.len() / frame_bytes * frame_bytes;
            if whole == 0 {
                continue;
            }
            interleaved.extend(
                self.bytes[..whole]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            self.bytes.drain(..whole);
            self.frames += (whole / frame_bytes) as u64;
            if self.frames > self.max_frames {
                return Err(DecodeError::NoAudio(format!(
                    "longer than {} hours",
                    MAX_SECONDS / 3600
                )));
            }
            return Ok(true);
        }
    }
}

impl Drop for FfmpegStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_their_pointer_prefix() {
        assert_eq!(
            plain("[mp3float @ 0x561f84de4880] Header missing"),
            "Header missing"
        );
        assert_eq!(plain("  Invalid data found  "), "Invalid data found");
        assert_eq!(plain("[x] y"), "[x] y");
    }

    #[test]
    fn ffprobe_output_gives_rate_channels_and_codec() {
        let p = |rate, channels, codec: &str| Probed {
            sample_rate: rate,
            channels,
            codec: codec.into(),
        };
        assert_eq!(
            parse_probe("codec_name=wmav2\ncodec_type=audio\nsample_rate=44100\nchannels=2\n"),
            Some(p(44_100, 2, "wmav2"))
        );
        assert_eq!(
            parse_probe("channels=6\r\nsample_rate=48000\r\ncodec_name=ac3\r\n"),
            Some(p(48_000, 6, "ac3"))
        );
        assert_eq!(parse_probe("sample_rate=0\nchannels=2\n"), None);
        assert_eq!(
            parse_probe("codec_type=video\nsample_rate=1\nchannels=1\n"),
            None
        );
        assert_eq!(parse_probe(""), None);
    }

    #[test]
    fn only_music_codecs_reach_the_model() {
        for yes in [
            "mp3",
            "aac",
            "vorbis",
            "opus",
            "flac",
            "wmav2",
            "wmapro",
            "ac3",
            "eac3",
            "wavpack",
            "ape",
            "musepack8",
            "tta",
            "pcm_s16le",
            "pcm_f32be",
            "alac",
            "dsd_lsbf",
        ] {
            assert!(is_music_codec(yes), "{yes}");
        }
        for no in [
            "amr_nb",
            "amr_wb",
            "gsm",
            "gsm_ms",
            "g723_1",
            "g729",
            "adpcm_g722",
            "speex",
            "qcelp",
            "evrc",
            "ilbc",
            "sipr",
            "ra_144",
            "mjpeg",
            "png",
            "h264",
            "",
        ] {
            assert!(!is_music_codec(no), "{no}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_input_is_one_argument_that_cannot_be_an_option() {
        let a = input_arg(Path::new("-i evil.wma"));
        let s = a.to_string_lossy();
        assert!(
            s.starts_with("file:/") && s.ends_with("/-i evil.wma"),
            "{s}"
        );
    }
}
