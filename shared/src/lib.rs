//! Wire types of chaarfm-super: the JSON lines it writes, the ChaarFM server's messages,
//! and the frames between the supervisor and its children.

pub mod ipc;
pub mod record;
pub mod server;
