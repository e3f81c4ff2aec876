//! Supervisor <-> child frames: a little-endian `u32` length, then a postcard-encoded
//! message. The supervisor's first frame tells a child how to start ([`ToChild::Start`]:
//! its argv is only the socket); the child then says [`FromChild::Hello`], and a protocol
//! mismatch is refused.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bumped on any change to the types below.
pub const PROTOCOL_VERSION: u32 = 5;

/// Seconds of audio between two [`FromChild::Progress`] reports of a job (~1 s of a
/// child's time here).
pub const PROGRESS_EVERY_S: f64 = 30.0;

/// Largest frame accepted; a result is ~1 KB, so anything near this is corruption.
pub const MAX_FRAME: usize = 1 << 20;

/// A file path as it crosses IPC: the OS's own bytes on Unix, UTF-16 code units
/// (little-endian) on Windows, so names that are not UTF-8 (Latin-1 `caf\xe9.wav`) arrive
/// intact. Supervisor and child are the same executable, so both sides agree.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WirePath(Vec<u8>);

impl WirePath {
    pub fn from_path(p: &Path) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            WirePath(p.as_os_str().as_bytes().to_vec())
        }
        #[cfg(windows)]
        {
            use std::os::windows::ffi::OsStrExt;
            WirePath(
                p.as_os_str()
                    .encode_wide()
                    .flat_map(u16::to_le_bytes)
                    .collect(),
            )
        }
    }

    pub fn to_path_buf(&self) -> PathBuf {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            PathBuf::from(std::ffi::OsStr::from_bytes(&self.0))
        }
        #[cfg(windows)]
        {
            use std::os::windows::ffi::OsStringExt;
            let wide: Vec<u16> = self
                .0
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            PathBuf::from(std::ffi::OsString::from_wide(&wide))
        }
    }
}

impl WirePath {
    /// The encoded bytes (see the type's doc).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_bytes(b: Vec<u8>) -> Self {
        WirePath(b)
    }
}

impl From<&Path> for WirePath {
    fn from(p: &Path) -> Self {
        WirePath::from_path(p)
    }
}

impl From<PathBuf> for WirePath {
    fn from(p: PathBuf) -> Self {
        WirePath::from_path(&p)
    }
}

impl From<&PathBuf> for WirePath {
    fn from(p: &PathBuf) -> Self {
        WirePath::from_path(p)
    }
}

/// Lossy, for logs.
impl std::fmt::Display for WirePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_path_buf().display().fmt(f)
    }
}

/// A job for a child: embed the file at `path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub path: WirePath,
    /// Also return the mean MSD tag activations.
    pub tags: bool,
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Device {
    Cpu,
    /// A CUDA GPU by index (needs the `cuda` feature and a CUDA-enabled runtime library).
    Cuda(u32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// How the model is run. Both give the same vector (max abs difference ~1e-6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Engine {
    /// The whole model on every patch, as Essentia runs it.
    Patch,
    /// The timbral front-end once per track, the rest per patch, each branch pooled first
    /// (MUSICNN.md section 8): ~1.75x faster on CPU.
    #[default]
    Shared,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Patch => "patch",
            Engine::Shared => "shared",
        })
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "patch" => Ok(Engine::Patch),
            "shared" => Ok(Engine::Shared),
            _ => Err(format!("unknown engine {s:?}: use patch or shared")),
        }
    }
}

/// How one child runs the model: the pool decides it per slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildSpec {
    pub device: Device,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
    /// Patches per inference call.
    pub batch: usize,
    pub engine: Engine,
    /// Niceness the child runs at (Unix; 0: the supervisor's own).
    pub nice: i32,
}

/// The first frame to a child: everything it needs before it loads the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub spec: ChildSpec,
    pub model: WirePath,
    /// The supervisor's pid: a child whose parent is already another exits.
    pub parent_pid: u32,
}

/// Supervisor -> child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToChild {
    /// Always the first frame, and only then.
    Start(Start),
    Job(Job),
    /// Finish nothing more; exit 0.
    Shutdown,
}

/// Where a job's time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub decode_ms: f64,
    pub resample_ms: f64,
    pub features_ms: f64,
    pub infer_ms: f64,
}

/// A finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutput {
    pub vector: Vec<f32>,
    /// Mean MSD tag activations (empty unless asked for).
    pub tags: Vec<f32>,
    pub patches: u32,
    pub duration_s: f64,
    pub timings: Timings,
    /// The child's peak resident memory so far, in KiB.
    pub peak_rss_kib: u64,
    /// The child's wall time for the job, from receiving it to replying, in ms; the
    /// supervisor's own measure minus this is the IPC and scheduling overhead.
    pub wall_ms: f64,
    /// Artist and title from the file's own tags, if it has them.
    pub artist: Option<String>,
    pub title: Option<String>,
}

/// Why a job failed inside a healthy child (the file's fault, not the child's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub message: String,
}

/// Child -> supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromChild {
    /// First frame: the child is ready to serve.
    Hello {
        protocol: u32,
        pid: u32,
        device: String,
        model_sha256: String,
    },
    /// The child could not start (model or runtime missing...). Respawning will not help.
    Fatal {
        message: String,
    },
    /// Job `id` has decoded and embedded `audio_s` seconds of audio so far (sent every
    /// [`PROGRESS_EVERY_S`] of audio): the supervisor pushes the job's deadline back.
    Progress {
        id: u64,
        audio_s: f64,
    },
    Done {
        id: u64,
        output: JobOutput,
    },
    Failed {
        id: u64,
        error: JobError,
    },
    /// Sent every second by a separate thread, so a frozen child is noticed.
    Heartbeat,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("IPC I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("IPC frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("IPC frame is malformed: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Length of the frame body announced by a 4-byte prefix, checked against [`MAX_FRAME`].
fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame body.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

/// Writes one frame (blocking).
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), FrameError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// The one frame decoder, used by both sides: bytes go in as they arrive, whatever the
/// reads' boundaries ([`FrameReader::feed`]); whole messages come out
/// ([`FrameReader::take`]). The child reads blocking ([`FrameReader::read`]), the
/// supervisor feeds it from async reads.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// No partial frame buffered: an end of stream here is clean.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next whole message fed, if any. An oversized length is an error as soon as
    /// its prefix arrives, before any body is buffered.
    pub fn take<T: for<'a> Deserialize<'a>>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let end = 4 + body_len(*prefix)?;
        if self.buf.len() < end {
            return Ok(None);
        }
        let msg = decode(&self.buf[4..end]);
        self.buf.drain(..end);
        msg.map(Some)
    }

    /// Blocking: reads from `r` until a message is whole. `Ok(None)` on a clean end of
    /// stream; an end mid-frame is an error.
    pub fn read<T: for<'a> Deserialize<'a>>(
        &mut self,
        r: &mut impl Read,
    ) -> Result<Option<T>, FrameError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(msg) = self.take()? {
                return Ok(Some(msg));
            }
            let n = match r.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if self.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
            self.feed(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let msgs = vec![
            FromChild::Hello {
                protocol: PROTOCOL_VERSION,
                pid: 7,
                device: "cpu".into(),
                model_sha256: "ab".into(),
            },
            FromChild::Done {
                id: 3,
                output: JobOutput {
                    vector: vec![0.5; 200],
                    tags: vec![],
                    patches: 2,
                    duration_s: 5.0,
                    timings: Timings::default(),
                    peak_rss_kib: 1,
                    wall_ms: 2.0,
                    artist: Some("A".into()),
                    title: None,
                },
            },
            FromChild::Heartbeat,
        ];
        let job = ToChild::Job(Job {
            id: 1,
            path: WirePath::from_path(Path::new("a/b.wav")),
            tags: true,
        });
        let mut jbuf = Vec::new();
        write_frame(&mut jbuf, &job).unwrap();
        let got = FrameReader::default().read::<ToChild>(&mut &jbuf[..]);
        assert_eq!(got.unwrap(), Some(job));
        let mut buf = Vec::new();
        for m in &msgs {
            write_frame(&mut buf, m).unwrap();
        }
        // Blocking reads that return several frames at once.
        let (mut r, mut frames) = (&buf[..], FrameReader::default());
        for m in &msgs {
            assert_eq!(frames.read::<FromChild>(&mut r).unwrap().as_ref(), Some(m));
        }
        assert_eq!(frames.read::<FromChild>(&mut r).unwrap(), None);
        // Bytes fed one at a time, as a slow socket may deliver them.
        let mut frames = FrameReader::default();
        let mut got = Vec::new();
        for b in &buf {
            frames.feed(std::slice::from_ref(b));
            while let Some(m) = frames.take::<FromChild>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        assert!(frames.is_empty());
    }

    #[test]
    fn the_start_frame_carries_every_field_of_the_childs_settings() {
        // Every field away from its default, so a field dropped or swapped shows.
        let start = ToChild::Start(Start {
            spec: ChildSpec {
                device: Device::Cuda(3),
                threads: 2,
                batch: 32,
                engine: Engine::Patch,
                nice: -5,
            },
            model: WirePath::from_bytes(b"/models/msd musicnn \xe9.onnx".to_vec()),
            parent_pid: 4242,
        });
        let mut buf = Vec::new();
        write_frame(&mut buf, &start).unwrap();
        let got = FrameReader::default()
            .read::<ToChild>(&mut &buf[..])
            .unwrap();
        assert_eq!(got, Some(start));
        for (d, shown) in [(Device::Cpu, "cpu"), (Device::Cuda(1), "cuda:1")] {
            assert_eq!(d.to_string(), shown);
        }
        for e in [Engine::Patch, Engine::Shared] {
            assert_eq!(e.to_string().parse::<Engine>(), Ok(e));
        }
        assert!("fast"
            .parse::<Engine>()
            .unwrap_err()
            .contains("patch or shared"));
    }

    #[test]
    fn a_stream_cut_mid_frame_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &FromChild::Heartbeat).unwrap();
        write_frame(&mut buf, &FromChild::Heartbeat).unwrap();
        buf.pop();
        let (mut r, mut frames) = (&buf[..], FrameReader::default());
        assert!(frames.read::<FromChild>(&mut r).unwrap().is_some());
        assert!(matches!(
            frames.read::<FromChild>(&mut r),
            Err(FrameError::Io(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_cross_intact() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/music/caf\xe9.wav"));
        let w = WirePath::from_path(p);
        let back: WirePath = decode(&postcard::to_stdvec(&w).unwrap()).unwrap();
        assert_eq!(back.to_path_buf(), p);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut big = Vec::new();
        big.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        // Refused from the prefix alone: no body is waited for.
        let mut frames = FrameReader::default();
        frames.feed(&big);
        assert!(matches!(
            frames.take::<ToChild>(),
            Err(FrameError::TooLarge(_))
        ));
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(
            FrameReader::default().read::<ToChild>(&mut &garbage[..]),
            Err(FrameError::Decode(_))
        ));
    }
}
