//! Coordinator interfaces: gRPC services (`grpc`) and the HTTP admin API (`http`).

pub mod cluster;
pub mod explain;
pub mod grpc;
pub mod http;
pub mod json;
pub mod status;
