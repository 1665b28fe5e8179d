//! Typed errors. Every error has a class (Transient, Permanent, Data) that retry
//! decisions read; the class and structured fields travel over gRPC in
//! `ErrorDetail` (inside task reports and tonic `Status` details), never as a bare string.

use autopipe_proto as pb;
use datafusion::error::DataFusionError;
use prost::Message;

/// What a caller should do with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with backoff: I/O timeouts, connection loss, worker lost.
    Transient,
    /// Fail fast: bad spec, SQL error, schema mismatch, permission.
    Permanent,
    /// A malformed record: goes to the dead-letter sink.
    Data,
}

impl ErrorClass {
    /// Wire representation.
    pub fn to_proto(self) -> pb::ErrorClass {
        match self {
            ErrorClass::Transient => pb::ErrorClass::Transient,
            ErrorClass::Permanent => pb::ErrorClass::Permanent,
            ErrorClass::Data => pb::ErrorClass::Data,
        }
    }
    /// From the wire; an unspecified class is treated as permanent (never retried blindly).
    pub fn from_proto(c: i32) -> Self {
        match pb::ErrorClass::try_from(c) {
            Ok(pb::ErrorClass::Transient) => ErrorClass::Transient,
            Ok(pb::ErrorClass::Data) => ErrorClass::Data,
            _ => ErrorClass::Permanent,
        }
    }
    /// Its name: transient, permanent or data.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Data => "data",
        }
    }
    /// From its name; anything else is permanent.
    pub fn from_name(name: &str) -> Self {
        match name {
            "transient" => ErrorClass::Transient,
            "data" => ErrorClass::Data,
            _ => ErrorClass::Permanent,
        }
    }
}

/// The `ErrorInfo.domain` of autopipe's errors on the wire.
pub const ERROR_DOMAIN: &str = "autopipe";

/// Standard error details holding an `ErrorInfo` of autopipe's domain: `reason` and
/// `metadata` (each refusal's `class` among them).
pub fn error_info(reason: &str, metadata: &[(&str, String)]) -> tonic_types::ErrorDetails {
    let mut d = tonic_types::ErrorDetails::new();
    let meta: std::collections::HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    d.set_error_info(reason, ERROR_DOMAIN, meta);
    d
}

/// autopipe's error at every crate boundary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline spec is invalid.
    #[error("{origin}: [{key}] {message}")]
    Spec {
        /// spec file (or "<request>")
        origin: String,
        /// the offending key, e.g. `sources[1].path`
        key: String,
        /// what is wrong and what to do
        message: String,
    },
    /// Planning or running the SQL failed for a reason the user must fix.
    #[error("[{key}] {message}")]
    Plan {
        /// spec key, usually `transform.sql`
        key: String,
        /// DataFusion's explanation
        message: String,
    },
    /// A reduce task could not read a map output.
    #[error("fetch failed: stage {stage_id} map task {map_task} on worker {worker_id}: {message}")]
    FetchFailed {
        /// producing stage
        stage_id: u32,
        /// producing map task
        map_task: u32,
        /// worker that held the output
        worker_id: String,
        /// underlying cause
        message: String,
    },
    /// A reduce task was not given, or did not read, every map output of an input
    /// stage: running it would silently miss rows. The coordinator relaunches it once
    /// the stage is complete.
    #[error("incomplete input: stage {stage_id}: {message}")]
    IncompleteInput {
        /// the input stage
        stage_id: u32,
        /// which map outputs were missing, duplicated or unexpected
        message: String,
    },
    /// A task ran out of its memory share even after spilling: retried with a larger
    /// share (and fewer tasks beside it).
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// Worth retrying.
    #[error("{0}")]
    Transient(String),
    /// Not worth retrying.
    #[error("{0}")]
    Permanent(String),
    /// A malformed record.
    #[error("{0}")]
    Data(String),
    /// Something the object store said.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Something DataFusion said.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
}

/// Result with autopipe's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn datafusion_class(e: &DataFusionError) -> ErrorClass {
    match e {
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::ResourcesExhausted(_) => ErrorClass::Transient,
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            datafusion::arrow::error::ArrowError::IoError(..) => ErrorClass::Transient,
            datafusion::arrow::error::ArrowError::ParseError(_)
            | datafusion::arrow::error::ArrowError::CsvError(_)
            | datafusion::arrow::error::ArrowError::JsonError(_) => ErrorClass::Data,
            _ => ErrorClass::Permanent,
        },
        DataFusionError::Context(_, inner) => datafusion_class(inner),
        DataFusionError::Shared(inner) => datafusion_class(inner),
        DataFusionError::External(inner) => match inner.downcast_ref::<Error>() {
            Some(e) => e.class(),
            None => ErrorClass::Permanent,
        },
        _ => ErrorClass::Permanent,
    }
}

impl Error {
    /// The retry class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Spec { .. } | Error::Plan { .. } | Error::Permanent(_) => ErrorClass::Permanent,
            Error::FetchFailed { .. }
            | Error::IncompleteInput { .. }
            | Error::OutOfMemory(_)
            | Error::Transient(_) => ErrorClass::Transient,
            Error::Data(_) => ErrorClass::Data,
            Error::ObjectStore(object_store::Error::NotFound { .. })
            | Error::ObjectStore(object_store::Error::PermissionDenied { .. }) => {
                ErrorClass::Permanent
            }
            Error::ObjectStore(_) => ErrorClass::Transient,
            Error::DataFusion(e) => datafusion_class(e),
        }
    }

    /// A planning error about the spec key `key`.
    pub fn plan(key: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Plan {
            key: key.into(),
            message: e.to_string(),
        }
    }

    /// Structured wire form.
    pub fn to_detail(&self) -> pb::ErrorDetail {
        let key = match self {
            Error::Spec { key, .. } | Error::Plan { key, .. } => key.clone(),
            _ => String::new(),
        };
        let fetch_failed = match self {
            Error::FetchFailed {
                stage_id,
                map_task,
                worker_id,
                ..
            } => Some(pb::FetchFailed {
                stage_id: *stage_id,
                map_task: *map_task,
                worker_id: worker_id.clone(),
            }),
            _ => None,
        };
        pb::ErrorDetail {
            error_class: self.class().to_proto() as i32,
            message: self.to_string(),
            key,
            fetch_failed,
            out_of_memory: self.is_out_of_memory(),
        }
    }

    /// Whether the task ran out of memory (DataFusion's `ResourcesExhausted`, however
    /// deeply wrapped).
    pub fn is_out_of_memory(&self) -> bool {
        fn df(e: &DataFusionError) -> bool {
            match e {
                DataFusionError::ResourcesExhausted(_) => true,
                DataFusionError::Context(_, inner) => df(inner),
                DataFusionError::Shared(inner) => df(inner),
                DataFusionError::External(inner) => inner
                    .downcast_ref::<Error>()
                    .is_some_and(Error::is_out_of_memory),
                _ => false,
            }
        }
        match self {
            Error::OutOfMemory(_) => true,
            Error::DataFusion(e) => df(e),
            _ => false,
        }
    }

    /// Rebuilds an error from its wire form, keeping its class.
    pub fn from_detail(d: &pb::ErrorDetail) -> Self {
        if let Some(f) = &d.fetch_failed {
            return Error::FetchFailed {
                stage_id: f.stage_id,
                map_task: f.map_task,
                worker_id: f.worker_id.clone(),
                message: d.message.clone(),
            };
        }
        if d.out_of_memory {
            return Error::OutOfMemory(d.message.clone());
        }
        match ErrorClass::from_proto(d.error_class) {
            ErrorClass::Transient => Error::Transient(d.message.clone()),
            ErrorClass::Data => Error::Data(d.message.clone()),
            ErrorClass::Permanent => Error::Permanent(d.message.clone()),
        }
    }

    /// As a tonic status in gRPC's richer error model (a `google.rpc.Status` in
    /// `grpc-status-details-bin`, which any client's standard library decodes): the
    /// code follows the class; `ErrorInfo` (domain `autopipe`) carries the reason and
    /// the class, key and fetch failure as metadata; a spec error names its key in a
    /// `BadRequest` field violation; a transient one suggests a `RetryInfo` delay.
    pub fn to_status(&self) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let code = match self.class() {
            ErrorClass::Transient => tonic::Code::Unavailable,
            ErrorClass::Permanent => tonic::Code::InvalidArgument,
            ErrorClass::Data => tonic::Code::DataLoss,
        };
        let d = self.to_detail();
        let mut details = ErrorDetails::new();
        let mut meta: std::collections::HashMap<String, String> = Default::default();
        meta.insert("class".into(), self.class().name().into());
        if !d.key.is_empty() {
            meta.insert("key".into(), d.key.clone());
            // the violation names the key; its description is the reason alone
            let reason = match self {
                Error::Spec { message, .. } | Error::Plan { message, .. } => message.clone(),
                _ => d.message.clone(),
            };
            details.add_bad_request_violation(d.key.clone(), reason);
        }
        if let Some(f) = &d.fetch_failed {
            meta.insert("stage_id".into(), f.stage_id.to_string());
            meta.insert("map_task".into(), f.map_task.to_string());
            meta.insert("worker_id".into(), f.worker_id.clone());
        }
        if d.out_of_memory {
            meta.insert("out_of_memory".into(), "true".into());
        }
        let reason = match (&d.fetch_failed, d.out_of_memory, self.class()) {
            (Some(_), _, _) => "FETCH_FAILED",
            (_, true, _) => "OUT_OF_MEMORY",
            _ if !d.key.is_empty() => "INVALID_SPEC",
            (_, _, ErrorClass::Transient) => "TRANSIENT",
            (_, _, ErrorClass::Data) => "DATA",
            (_, _, ErrorClass::Permanent) => "PERMANENT",
        };
        details.set_error_info(reason, ERROR_DOMAIN, meta);
        if self.class() == ErrorClass::Transient {
            details.set_retry_info(Some(std::time::Duration::from_millis(500)));
        }
        tonic::Status::with_error_details(code, self.to_string(), details)
    }

    /// From a tonic status: our `ErrorInfo` if present (or, from an older peer, a
    /// bare `ErrorDetail`), otherwise classified by code.
    pub fn from_status(s: &tonic::Status) -> Self {
        use tonic_types::StatusExt;
        if !s.details().is_empty() {
            if let Ok(details) = s.check_error_details() {
                if let Some(info) = details.error_info().filter(|i| i.domain == ERROR_DOMAIN) {
                    let m = &info.metadata;
                    let num = |k: &str| m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
                    let fetch_failed = m.get("worker_id").map(|w| pb::FetchFailed {
                        stage_id: num("stage_id"),
                        map_task: num("map_task"),
                        worker_id: w.clone(),
                    });
                    let class = m
                        .get("class")
                        .map_or(ErrorClass::Permanent, |c| ErrorClass::from_name(c));
                    return Error::from_detail(&pb::ErrorDetail {
                        error_class: class.to_proto() as i32,
                        message: s.message().to_string(),
                        key: m.get("key").cloned().unwrap_or_default(),
                        fetch_failed,
                        out_of_memory: m.get("out_of_memory").is_some_and(|v| v == "true"),
                    });
                }
            }
            if let Ok(d) = pb::ErrorDetail::decode(s.details()) {
                return Error::from_detail(&d);
            }
        }
        match s.code() {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
            | tonic::Code::Internal => Error::Transient(format!("{}: {}", s.code(), s.message())),
            _ => Error::Permanent(format!("{}: {}", s.code(), s.message())),
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::DataFusion(e.into())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_and_fields_survive_the_wire() {
        let e = Error::FetchFailed {
            stage_id: 2,
            map_task: 5,
            worker_id: "w-1".into(),
            message: "connection refused".into(),
        };
        let back = Error::from_status(&e.to_status());
        assert!(matches!(
            back,
            Error::FetchFailed {
                stage_id: 2,
                map_task: 5,
                ..
            }
        ));
        assert_eq!(back.class(), ErrorClass::Transient);

        let p = Error::plan("transform.sql", "table 'x' not found");
        let s = p.to_status();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(Error::from_status(&s).class(), ErrorClass::Permanent);
    }

    #[test]
    fn the_wire_form_is_grpcs_richer_error_model() {
        use tonic_types::StatusExt;
        let s = Error::plan("sources[0].path", "does not exist").to_status();
        let d = s.check_error_details().expect("a google.rpc.Status");
        let v = &d.bad_request().expect("a BadRequest").field_violations[0];
        assert_eq!(v.field, "sources[0].path");
        assert_eq!(v.description, "does not exist", "the reason alone");
        let info = d.error_info().expect("an ErrorInfo");
        assert_eq!(
            (info.domain.as_str(), info.reason.as_str()),
            ("autopipe", "INVALID_SPEC")
        );
        assert!(d.retry_info().is_none(), "a spec error is not retried");
        let s = Error::Transient("reset".into()).to_status();
        let d = s.check_error_details().expect("a google.rpc.Status");
        assert_eq!(d.error_info().map(|i| i.reason.as_str()), Some("TRANSIENT"));
        assert!(d.retry_info().is_some());
        assert_eq!(Error::from_status(&s).class(), ErrorClass::Transient);
        // an older peer's bare ErrorDetail still reads
        let old = tonic::Status::with_details(
            tonic::Code::Unavailable,
            "x",
            Error::Data("bad row".into())
                .to_detail()
                .encode_to_vec()
                .into(),
        );
        assert_eq!(Error::from_status(&old).class(), ErrorClass::Data);
    }

    #[test]
    fn running_out_of_memory_is_transient_and_survives_the_wire() {
        let e = Error::from(DataFusionError::Context(
            "aggregate".into(),
            Box::new(DataFusionError::ResourcesExhausted("pool full".into())),
        ));
        assert!(e.is_out_of_memory());
        assert_eq!(e.class(), ErrorClass::Transient);
        let back = Error::from_status(&e.to_status());
        assert!(matches!(back, Error::OutOfMemory(_)), "{back:?}");
        assert!(!Error::Transient("reset".into()).is_out_of_memory());
    }

    #[test]
    fn datafusion_io_errors_are_transient_and_plan_errors_permanent() {
        let io = Error::from(DataFusionError::IoError(std::io::Error::other("reset")));
        assert_eq!(io.class(), ErrorClass::Transient);
        let plan = Error::from(DataFusionError::Plan("no field".into()));
        assert_eq!(plan.class(), ErrorClass::Permanent);
    }
}
