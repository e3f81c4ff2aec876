//! A byte stream from the other end of the IPC pipe, in any pieces: every frame decodes
//! or is an error; an oversized length is refused; never a panic or a huge allocation.
#![no_main]
use chaarfm_shared::ipc::{FrameReader, FromChild, ToChild};
use libfuzzer_sys::fuzz_target;

fn drain<T: for<'a> serde::Deserialize<'a>>(data: &[u8], cut: usize) {
    let mut reader = FrameReader::default();
    let cut = cut.min(data.len());
    for piece in [&data[..cut], &data[cut..]] {
        reader.feed(piece);
        // `take` drops a malformed frame and reports it; the supervisor then ends the
        // child. Keep going here so what follows is exercised too. An oversized length
        // stays buffered (nothing to skip to), so stop there.
        loop {
            match reader.take::<T>() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(chaarfm_shared::ipc::FrameError::TooLarge(_)) => return,
                Err(_) => {}
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let cut = data.first().copied().unwrap_or(0) as usize;
    drain::<FromChild>(data, cut);
    drain::<ToChild>(data, cut);
});
