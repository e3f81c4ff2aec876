//! A minimal RIFF/WAVE writer for test inputs (PCM 16/24/32-bit, IEEE float, any rate and
//! channel count, or an arbitrary format tag for "unsupported codec" cases).

use std::io::Write;
use std::path::Path;

/// Sample encoding of a written WAV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Pcm16,
    Pcm24,
    Pcm32,
    Float32,
}

/// Writes `frames` (each `channels` samples in -1..1) to `path`.
pub fn write(
    path: &Path,
    rate: u32,
    channels: u16,
    enc: Encoding,
    frames: &[f32],
) -> std::io::Result<()> {
    let (tag, bits) = match enc {
        Encoding::Pcm16 => (1u16, 16u16),
        Encoding::Pcm24 => (1, 24),
        Encoding::Pcm32 => (1, 32),
        Encoding::Float32 => (3, 32),
    };
    let mut data = Vec::with_capacity(frames.len() * usize::from(bits / 8));
    for &x in frames {
        let c = f64::from(x.clamp(-1.0, 1.0));
        match enc {
            Encoding::Pcm16 => {
                data.extend_from_slice(&((c * 32767.0).round() as i16).to_le_bytes())
            }
            Encoding::Pcm24 => {
                data.extend_from_slice(&((c * 8_388_607.0).round() as i32).to_le_bytes()[..3])
            }
            Encoding::Pcm32 => {
                data.extend_from_slice(&((c * 2_147_483_647.0).round() as i32).to_le_bytes())
            }
            // Float keeps the raw value, so NaN and infinity can be written on purpose.
            Encoding::Float32 => data.extend_from_slice(&x.to_le_bytes()),
        }
    }
    write_raw(path, tag, rate, channels, bits, &data)
}

/// Writes a WAV with any format tag and raw data bytes.
pub fn write_raw(
    path: &Path,
    tag: u16,
    rate: u32,
    channels: u16,
    bits: u16,
    data: &[u8],
) -> std::io::Result<()> {
    let block = channels * bits / 8;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(b"RIFF")?;
    f.write_all(&(36 + data.len() as u32).to_le_bytes())?;
    f.write_all(b"WAVEfmt ")?;
    f.write_all(&16u32.to_le_bytes())?;
    f.write_all(&tag.to_le_bytes())?;
    f.write_all(&channels.to_le_bytes())?;
    f.write_all(&rate.to_le_bytes())?;
    f.write_all(&(rate * u32::from(block)).to_le_bytes())?;
    f.write_all(&block.to_le_bytes())?;
    f.write_all(&bits.to_le_bytes())?;
    f.write_all(b"data")?;
    f.write_all(&(data.len() as u32).to_le_bytes())?;
    f.write_all(data)?;
    f.flush()
}
