//! Placeholder; replaced by the call-setup benchmark.
fn main() {}
