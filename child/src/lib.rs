//! The work of a chaarfm-super child process: decode audio, compute MusiCNN features,
//! run the model. Everything here may crash on hostile input in native code (codecs,
//! ONNX Runtime), which is why the supervisor runs it in separate processes.

pub mod decode;
pub mod fault;
pub mod features;
pub mod ffmpeg;
pub mod formats;
pub mod graph;
pub mod infer;
pub mod isolation;
pub mod layout;
pub mod model;
pub mod pipeline;
pub mod resample;
pub mod runtime;
pub mod serve;
pub mod winograd;

pub use infer::{Device, Engine, InferOptions, Musicnn};
pub use pipeline::{embed_file, EmbedError, Embedding};
