//! Compiles `proto/onnx.proto` into prost types for `graph` (protox: no `protoc`).

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let files = match protox::compile(["proto/onnx.proto"], ["proto"]) {
        Ok(files) => files,
        Err(e) => panic!("proto/onnx.proto does not compile: {e}"),
    };
    let mut config = prost_build::Config::new();
    // The schema's comments hold indented text that rustdoc would run as doctests.
    config.disable_comments(["."]);
    if let Err(e) = config.compile_fds(files) {
        panic!("generating the ONNX types: {e}");
    }
}
