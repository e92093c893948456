//! Checks that the vendored `protoc` (used by libsignal's build scripts) exists for this host.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!(
            "cargo:warning=no vendored protoc for this host ({e}); set PROTOC to a protoc binary"
        );
    }
}
