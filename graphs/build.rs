//! Compiles our ONNX subset (`proto/onnx.proto`) with protox + prost-build: no `protoc` needed.
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = match protox::compile(["proto/onnx.proto"], ["proto"]) {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("protox failed on proto/onnx.proto: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        eprintln!("prost-build failed: {e}");
        std::process::exit(1);
    }
}
