//! Supervisor <-> child frames: a little-endian `u32` length, then a postcard-encoded
//! message. The child speaks first ([`FromChild::Hello`]); a protocol mismatch is refused.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Bumped on any change to the types below.
pub const PROTOCOL_VERSION: u32 = 2;

/// Largest frame accepted; a result is ~1 KB, so anything near this is corruption.
pub const MAX_FRAME: usize = 1 << 20;

/// A job for a child: embed the file at `path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub path: String,
    /// Also return the mean MSD tag activations.
    pub tags: bool,
}

/// Supervisor -> child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToChild {
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
    /// Audio of job `id` decoded: `duration_s` of it; the supervisor sets the job's deadline.
    Decoded {
        id: u64,
        duration_s: f64,
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
pub fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
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

/// Reads one frame (blocking). `Ok(None)` on a clean end of stream.
pub fn read_frame<T: for<'a> Deserialize<'a>>(r: &mut impl Read) -> Result<Option<T>, FrameError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; body_len(prefix)?];
    r.read_exact(&mut body)?;
    Ok(Some(decode(&body)?))
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
        let mut buf = Vec::new();
        for m in &msgs {
            write_frame(&mut buf, m).unwrap();
        }
        let mut r = &buf[..];
        for m in &msgs {
            assert_eq!(read_frame::<FromChild>(&mut r).unwrap().as_ref(), Some(m));
        }
        assert_eq!(read_frame::<FromChild>(&mut r).unwrap(), None);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut big = Vec::new();
        big.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert!(matches!(
            read_frame::<ToChild>(&mut &big[..]),
            Err(FrameError::TooLarge(_))
        ));
        let garbage = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame::<ToChild>(&mut &garbage[..]),
            Err(FrameError::Decode(_))
        ));
    }
}
