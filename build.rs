//! Compiles `proto/` with tonic-prost-build, using the protoc binary vendored by
//! protoc-bin-vendored so a fresh machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .compile_protos(&["proto/ferry/v1/replication.proto"], &["proto"])?;
    Ok(())
}
