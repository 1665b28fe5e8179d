//! Generated gRPC/protobuf types of autopipe (see `proto/autopipe.proto`).
#![allow(missing_docs, clippy::all)]

/// autopipe.v1: jobs, admin, workers, tasks and shuffle tickets.
pub mod v1 {
    tonic::include_proto!("autopipe.v1");
}
pub use v1::*;
