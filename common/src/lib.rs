//! autopipe-common: what coordinator, worker and CLI share — the pipeline spec and
//! its validation, typed errors with a retry class, the one retry policy, object
//! store helpers, the DataFusion extension codec for shuffle reads and the tolerant
//! CSV/NDJSON scans that route bad records to the dead-letter sink, the cluster
//! token every gRPC client sends and every server checks (`auth`), and the
//! `--allowed-roots` path confinement (`roots`), Kafka sources (`kafka`) and Delta
//! Lake tables (`delta`).
#![warn(missing_docs)]

pub mod auth;
pub mod delta;
pub mod error;
pub mod failpoint;
pub mod kafka;
pub mod leader;
pub mod retry;
pub mod roots;
pub mod session;
pub mod shuffle;
pub mod spec;
pub mod splits;
pub mod store;
pub mod stream_state;
pub mod task;
pub mod tls;
pub mod tolerant;
pub mod util;

pub use error::{Error, ErrorClass, Result};
