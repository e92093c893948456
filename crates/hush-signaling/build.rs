//! Compiles the signaling `.proto` files with prost-build, using the vendored `protoc`.
fn main() {
    println!("cargo:rerun-if-changed=proto/signaling.proto");
    println!("cargo:rerun-if-changed=proto/relay.proto");
    let mut config = prost_build::Config::new();
    match protoc_bin_vendored::protoc_bin_path() {
        Ok(path) => {
            config.protoc_executable(path);
        }
        Err(e) => {
            println!("cargo:warning=no vendored protoc for this host ({e}); using PROTOC/PATH");
        }
    }
    if let Err(e) =
        config.compile_protos(&["proto/signaling.proto", "proto/relay.proto"], &["proto"])
    {
        panic!("compiling signaling protos failed: {e}");
    }
}
