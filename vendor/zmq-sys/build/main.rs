pub fn configure() {
    println!("cargo:rerun-if-changed=build/main.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");

    // Note that by default `libzmq` builds without `libsodium` by instead
    // relying on `tweetnacl`. However since this `tweetnacl` [has never been
    // audited nor is ready for production](https://github.com/zeromq/libzmq/issues/3006),
    // we link against `libsodium` to enable `ZMQ_CURVE`.
    //
    // ferry: upstream passes `None` here, which builds libzmq without CURVE.
    // libsodium-sys-stable (`links = "sodium"`) builds libsodium from the
    // source tarball it ships and exports where it put the headers and the
    // static library, which reach this script as DEP_SODIUM_INCLUDE and
    // DEP_SODIUM_LIB. See vendor/zmq-sys/README.md.
    let sodium_include = std::env::var("DEP_SODIUM_INCLUDE")
        .expect("libsodium-sys-stable did not export DEP_SODIUM_INCLUDE");
    let sodium_lib = std::env::var("DEP_SODIUM_LIB")
        .expect("libsodium-sys-stable did not export DEP_SODIUM_LIB");
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(
            sodium_lib,
            sodium_include,
        )))
        .build();
}

fn main() {
    configure()
}
