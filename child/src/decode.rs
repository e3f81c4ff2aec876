//! Audio decoding with symphonia (plus libopus for Opus), downmixed to mono by mean;
//! what symphonia cannot read goes to `ffmpeg` when it is installed (`crate::ffmpeg`).
//!
//! Pull-based and streaming: [`AudioStream::next_chunk`] yields one packet's worth of mono
//! samples at the source rate, so a long track never sits in memory at its source rate.
//! Where samples start follows Essentia (MUSICNN.md step 1): MP3 gapless trimming is on
//! (symphonia's default), MP4 edit lists are not applied (symphonia does not support them),
//! so AAC priming samples stay in, as in Essentia.

use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::codecs::registry::CodecRegistry;
use symphonia::core::errors::Error as SymErr;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream, ReadOnlySource};
use symphonia::core::meta::MetadataOptions;

pub use crate::formats::{DecodeError, AUDIO_EXTENSIONS, SYMPHONIA_EXTENSIONS};

/// Artist and title from the file's own tags (ID3, Vorbis comments, MP4 atoms...).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileTags {
    pub artist: Option<String>,
    pub title: Option<String>,
}

/// What the decoder saw, for logs and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct DecodeStats {
    /// Packets that failed to decode and were skipped.
    pub skipped_packets: usize,
    /// The stream ended early with an error; what decoded before it is used.
    pub truncated: bool,
    /// Mono frames produced at the source rate.
    pub frames: u64,
}

fn codecs() -> &'static CodecRegistry {
    static REGISTRY: OnceLock<CodecRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut registry = CodecRegistry::new();
        symphonia::default::register_enabled_codecs(&mut registry);
        registry.register_audio_decoder::<symphonia_adapter_libopus::OpusDecoder>();
        registry
    })
}

/// Give up on a file after this many packets in a row fail to decode.
const MAX_CONSECUTIVE_BAD_PACKETS: usize = 200;

/// Where the samples come from.
enum Source {
    Symphonia {
        reader: Box<dyn FormatReader>,
        decoder: Box<dyn AudioDecoder>,
        track_id: u32,
    },
    Ffmpeg(crate::ffmpeg::FfmpegStream),
}

/// An open audio file yielding mono samples at its own rate.
pub struct AudioStream {
    source: Source,
    sample_rate: u32,
    /// The ffmpeg fallback's samples, interleaved as its pipe gives them.
    interleaved: Vec<f32>,
    /// symphonia's samples, one vector per channel as its decoders give them.
    planes: Vec<Vec<f32>>,
    stats: DecodeStats,
    done: bool,
}

impl AudioStream {
    /// Opens and probes `path`; fails if it holds no decodable audio track. A format or
    /// codec symphonia lacks goes to ffmpeg, when installed.
    pub fn open(path: &Path) -> Result<Self, DecodeError> {
        let owned = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .filter(|e| SYMPHONIA_EXTENSIONS.contains(&e.as_str()));
        match Self::open_symphonia(path) {
            Err(DecodeError::Unrecognized(why)) if owned.is_some() => Err(DecodeError::Corrupt {
                format: owned.unwrap_or_default().to_ascii_uppercase(),
                why,
            }),
            Err(
                DecodeError::Unrecognized(why)
                | DecodeError::UnsupportedFormat(why)
                | DecodeError::UnsupportedCodec(why),
            ) => {
                let ext = path
                    .extension()
                    .map(|e| format!(".{}: ", e.to_string_lossy()))
                    .unwrap_or_default();
                let Some(ffmpeg) = crate::ffmpeg::find() else {
                    return Err(DecodeError::UnsupportedFormat(format!("{ext}{why}")));
                };
                let ff = crate::ffmpeg::FfmpegStream::open(&ffmpeg, path, &format!("{ext}{why}"))?;
                Ok(Self {
                    sample_rate: ff.sample_rate,
                    source: Source::Ffmpeg(ff),
                    interleaved: Vec::new(),
                    planes: Vec::new(),
                    stats: DecodeStats::default(),
                    done: false,
                })
            }
            other => other,
        }
    }

    fn open_symphonia(path: &Path) -> Result<Self, DecodeError> {
        let file = File::open(path).map_err(DecodeError::Open)?;
        if file.metadata().map(|m| m.len() == 0).unwrap_or(false) {
            return Err(DecodeError::Empty);
        }
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let probe = |source: Box<dyn MediaSource>| {
            symphonia::default::get_probe().probe(
                &hint,
                MediaSourceStream::new(source, Default::default()),
                FormatOptions::default(),
                MetadataOptions::default(),
            )
        };
        let reader = match probe(Box::new(file)) {
            Ok(r) => r,
            Err(first) => {
                // A cut-off WebM/Matroska download declares a Segment longer than the file,
                // which the demuxer refuses when it knows the length; read as a plain
                // stream of unknown length instead, as players do.
                let file = File::open(path).map_err(DecodeError::Open)?;
                probe(Box::new(ReadOnlySource::new(file))).map_err(|_| {
                    // The probe's own refusal: no reader knows these bytes. Any other is
                    // a reader that knew its container and refused what is inside.
                    let unknown =
                        matches!(&first, SymErr::Unsupported(m) if m.starts_with("core (probe)"));
                    if unknown {
                        DecodeError::Unrecognized(first.to_string())
                    } else {
                        DecodeError::UnsupportedFormat(first.to_string())
                    }
                })?
            }
        };
        let track = reader
            .default_track(TrackType::Audio)
            .ok_or(DecodeError::NoAudioTrack)?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or(DecodeError::NoAudioTrack)?;
        let decoder = codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(|e| DecodeError::UnsupportedCodec(e.to_string()))?;
        let sample_rate = params
            .sample_rate
            .ok_or_else(|| DecodeError::UnsupportedCodec("sample rate unknown".into()))?;
        let track_id = track.id;
        Ok(Self {
            source: Source::Symphonia {
                reader,
                decoder,
                track_id,
            },
            sample_rate,
            interleaved: Vec::new(),
            planes: Vec::new(),
            stats: DecodeStats::default(),
            done: false,
        })
    }

    /// Source sample rate in Hz.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// What was decoded so far.
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    /// Artist and title from every metadata revision seen so far (later ones win).
    pub fn file_tags(&mut self) -> FileTags {
        use symphonia::core::meta::StandardTag;
        let mut out = FileTags::default();
        let Source::Symphonia { reader, .. } = &mut self.source else {
            return out;
        };
        let mut meta = reader.metadata();
        loop {
            if let Some(rev) = meta.current() {
                let per_track = rev.per_track.iter().flat_map(|t| t.metadata.tags.iter());
                for tag in rev.media.tags.iter().chain(per_track) {
                    match &tag.std {
                        Some(StandardTag::Artist(a)) if !a.trim().is_empty() => {
                            out.artist = Some(a.trim().to_string())
                        }
                        Some(StandardTag::TrackTitle(t)) if !t.trim().is_empty() => {
                            out.title = Some(t.trim().to_string())
                        }
                        _ => {}
                    }
                }
            }
            if meta.is_latest() || meta.pop().is_none() {
                break;
            }
        }
        out
    }

    /// Replaces `mono` with the next decoded samples. Returns `false` at the end.
    pub fn next_chunk(&mut self, mono: &mut Vec<f32>) -> Result<bool, DecodeError> {
        mono.clear();
        let (reader, decoder, track_id) = match &mut self.source {
            Source::Symphonia {
                reader,
                decoder,
                track_id,
            } => (reader, decoder, *track_id),
            Source::Ffmpeg(ff) => {
                let channels = ff.channels;
                while ff.next_interleaved(&mut self.interleaved)? {
                    downmix(&self.interleaved, channels, mono);
                    if counted(mono, &mut self.stats)? {
                        return Ok(true);
                    }
                }
                return Ok(false);
            }
        };
        let mut bad_in_a_row = 0;
        while !self.done {
            let packet = match reader.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) | Err(SymErr::ResetRequired) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    // A damaged or cut-off container: keep what decoded before it.
                    if self.stats.frames == 0 {
                        return Err(DecodeError::NoAudio(e.to_string()));
                    }
                    tracing::debug!(error = %e, "stream ends early; using what decoded");
                    self.stats.truncated = true;
                    self.done = true;
                    break;
                }
            };
            if packet.track_id != track_id {
                continue;
            }
            let buf = match decoder.decode(&packet) {
                Ok(buf) => buf,
                Err(SymErr::DecodeError(_)) | Err(SymErr::IoError(_)) => {
                    self.stats.skipped_packets += 1;
                    bad_in_a_row += 1;
                    if bad_in_a_row >= MAX_CONSECUTIVE_BAD_PACKETS {
                        if self.stats.frames == 0 {
                            return Err(DecodeError::NoAudio(format!(
                                "{bad_in_a_row} packets in a row failed to decode"
                            )));
                        }
                        self.stats.truncated = true;
                        self.done = true;
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(DecodeError::UnsupportedCodec(e.to_string())),
            };
            bad_in_a_row = 0;
            let rate = buf.spec().rate();
            if rate != self.sample_rate {
                return Err(DecodeError::RateChange {
                    from: self.sample_rate,
                    to: rate,
                });
            }
            buf.copy_to_vecs_planar(&mut self.planes);
            downmix_planes(&self.planes, mono);
            if counted(mono, &mut self.stats)? {
                return Ok(true);
            }
        }
        if self.stats.frames == 0 {
            return Err(DecodeError::NoAudio("the stream holds no samples".into()));
        }
        Ok(false)
    }
}

/// Refuses non-finite samples in what was just downmixed into `mono` and counts its
/// frames; whether any came out. The same for every source, so every format follows one
/// rule.
fn counted(mono: &[f32], stats: &mut DecodeStats) -> Result<bool, DecodeError> {
    if mono.iter().any(|x| !x.is_finite()) {
        return Err(DecodeError::NonFinite);
    }
    stats.frames += mono.len() as u64;
    Ok(!mono.is_empty())
}

/// Mean of the channels of interleaved samples (Essentia `MonoMixer`, `downmix='mix'`).
pub fn downmix(interleaved: &[f32], channels: usize, mono: &mut Vec<f32>) {
    if channels == 1 {
        mono.extend_from_slice(interleaved);
        return;
    }
    let scale = 1.0 / channels as f32;
    mono.extend(
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() * scale),
    );
}

/// [`downmix`] of samples held one vector per channel: the same sum, channel by channel in
/// the same order, so the same bits, without interleaving them first.
pub fn downmix_planes(planes: &[Vec<f32>], mono: &mut Vec<f32>) {
    let Some((first, rest)) = planes.split_first() else {
        return;
    };
    let start = mono.len();
    mono.extend_from_slice(first);
    if rest.is_empty() {
        return;
    }
    let out = &mut mono[start..];
    for plane in rest {
        for (m, x) in out.iter_mut().zip(plane) {
            *m += x;
        }
    }
    let scale = 1.0 / planes.len() as f32;
    for m in out {
        *m *= scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downmixing_planes_gives_the_bits_of_downmixing_them_interleaved() {
        // Sums whose rounding depends on the order, signed zeros, 1 to 6 channels.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        for channels in 1..=6 {
            let mut planes: Vec<Vec<f32>> = (0..channels)
                .map(|_| (0..1000).map(|_| next() * 1e3f32.powf(next())).collect())
                .collect();
            planes[0][0] = -0.0;
            if channels > 1 {
                planes[1][0] = -0.0;
            }
            let interleaved: Vec<f32> = (0..1000)
                .flat_map(|i| planes.iter().map(move |p| p[i]))
                .collect();
            let (mut a, mut b) = (vec![7.0], vec![7.0]);
            downmix(&interleaved, channels, &mut a);
            downmix_planes(&planes, &mut b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{channels} channels");
        }
    }

    #[test]
    fn downmix_is_the_mean_of_channels() {
        let mut mono = Vec::new();
        downmix(&[1.0, 3.0, -1.0, 1.0], 2, &mut mono);
        assert_eq!(mono, vec![2.0, 0.0]);
        mono.clear();
        downmix(&[0.5, 0.25], 1, &mut mono);
        assert_eq!(mono, vec![0.5, 0.25]);
    }
}
