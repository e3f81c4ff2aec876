//! The audio files we read, and why one could not be read: shared by the decoder
//! (`decode`), its ffmpeg fallback (`ffmpeg`) and the supervisor's downloader.

/// Why a file could not be decoded. Each message says what is wrong with the file.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot open file: {0}")]
    Open(#[source] std::io::Error),
    #[error("file is empty")]
    Empty,
    #[error("not a supported audio file ({0}); supported: MP3, MP1/MP2, AAC and ALAC in MP4/M4A, Ogg Vorbis/Opus, WebM/Matroska Opus, FLAC, WAV, AIFF, CAF{hint}", hint = FFMPEG_HINT)]
    UnsupportedFormat(String),
    #[error("not an audio file that symphonia or ffmpeg can read ({0})")]
    Unreadable(String),
    #[error("not a valid {format} file ({why}): it is damaged, cut short, or not audio at all (a web page saved under an audio name)")]
    Corrupt { format: String, why: String },
    /// No reader of symphonia recognized the bytes (turned into `Corrupt` or the ffmpeg
    /// fallback by [`AudioStream::open`]; said like `UnsupportedFormat`).
    #[error("not a supported audio file ({0}); supported: MP3, MP1/MP2, AAC and ALAC in MP4/M4A, Ogg Vorbis/Opus, WebM/Matroska Opus, FLAC, WAV, AIFF, CAF{hint}", hint = FFMPEG_HINT)]
    Unrecognized(String),
    #[error("file has no audio track")]
    NoAudioTrack,
    #[error("unsupported audio codec ({0}){hint}", hint = FFMPEG_HINT)]
    UnsupportedCodec(String),
    #[error("no decodable audio in the file ({0})")]
    NoAudio(String),
    #[error("audio contains non-finite samples (NaN or infinity)")]
    NonFinite,
    #[error("sample rate changes mid-stream ({from} Hz to {to} Hz)")]
    RateChange { from: u32, to: u32 },
}

/// Said with a refusal when the ffmpeg fallback is not there.
const FFMPEG_HINT: &str = "; installing ffmpeg adds WMA, AC3/E-AC3, WavPack, APE, Musepack and every other format it reads";

/// File extensions of audio files, for walking folders (`ingest`): what symphonia reads,
/// and what the ffmpeg fallback adds when installed.
pub const AUDIO_EXTENSIONS: &[&str] = &[
    "mp3", "mp2", "mp1", "mpa", "m4a", "m4b", "mp4", "aac", "alac", "ogg", "oga", "opus", "flac",
    "wav", "wave", "aif", "aiff", "aifc", "caf", "webm", "mka", "mkv", "wma", "asf", "ac3", "eac3",
    "wv", "ape", "mpc", "tta", "dts", "au", "snd",
];

/// Extensions of the containers symphonia reads itself. A file so named in which no
/// reader of symphonia recognizes its container is refused as corrupt, never handed to
/// ffmpeg, which takes almost any bytes for some stream (a web page named `.mp3` decoded
/// as minutes of speech). A container symphonia recognizes holding a codec or variant it
/// lacks (AC3 in Matroska, GSM in WAV) still goes to ffmpeg, whose codec must be music
/// (`ffmpeg::is_music_codec`).
pub const SYMPHONIA_EXTENSIONS: &[&str] = &[
    "mp3", "mp2", "mp1", "mpa", "m4a", "m4b", "mp4", "aac", "alac", "ogg", "oga", "opus", "flac",
    "wav", "wave", "aif", "aiff", "aifc", "caf", "webm", "mka", "mkv",
];
