//! Compiles `proto/autopipe.proto` with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/autopipe.proto");
    let fds = protox::compile(["proto/autopipe.proto"], ["proto"])?;
    // the descriptors, for server reflection (`grpcurl list`)
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("autopipe_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
