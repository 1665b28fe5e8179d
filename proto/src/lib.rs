//! Generated gRPC/protobuf types of autopipe (see `proto/autopipe.proto`).
#![allow(missing_docs, clippy::all)]

/// autopipe.v1: jobs, admin, workers, tasks and shuffle tickets.
pub mod v1 {
    tonic::include_proto!("autopipe.v1");
}
pub use v1::*;

/// The encoded `FileDescriptorSet` of `autopipe.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/autopipe_descriptor.bin"));

/// The services a client of the public API uses (the others are cluster-internal).
pub const PUBLIC_SERVICES: [&str; 2] = ["autopipe.v1.JobService", "autopipe.v1.AdminService"];
