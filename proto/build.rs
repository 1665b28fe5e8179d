//! Compiles the protos under `proto/` with protox (pure Rust), so no system `protoc`
//! is needed: the public API `autopipe/v1/*.proto` (package `autopipe.v1`) and the
//! cluster-internal `autopipe/internal/v1/*.proto` (package `autopipe.internal.v1`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    for dir in ["proto/autopipe/v1", "proto/autopipe/internal/v1"] {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "proto") {
                files.push(p);
            }
        }
    }
    files.sort();
    let fds = protox::compile(&files, ["proto"])?;
    // the descriptors, for server reflection (`grpcurl list`)
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("autopipe_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // the typed pipeline spec serializes to the spec's JSON: its fields are named as
    // the TOML keys (see `autopipe/v1/spec.proto`)
    let mut build = tonic_prost_build::configure();
    for m in [
        "PipelineSpec",
        "JobSpec",
        "JobParams",
        "SourceSpec",
        "TransformSpec",
        "SinkSpec",
    ] {
        build = build.type_attribute(format!(".autopipe.v1.{m}"), "#[derive(serde::Serialize)]");
    }
    build.compile_fds(fds)?;
    Ok(())
}
