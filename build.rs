//! Compiles `proto/` with tonic-prost-build, using the protoc binary vendored by
//! protoc-bin-vendored so a fresh machine needs nothing but cargo. Also writes the encoded
//! file descriptor set that gRPC server reflection serves (`src/grpc_tooling.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Without these, cargo reruns this script (and so rebuilds the library) whenever any file
    // of the package changes, a test file included.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ferry_descriptor.bin"))
        .compile_protos(&["proto/ferry/v1/replication.proto"], &["proto"])?;
    Ok(())
}
