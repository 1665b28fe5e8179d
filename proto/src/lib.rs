//! Generated gRPC/protobuf types of autopipe (see `proto/autopipe/`).
//!
//! [`v1`] is the public API (`autopipe.v1`: JobService, AdminService, the job spec and
//! the error model); [`internal::v1`] is the cluster-internal protocol between
//! coordinators and workers. Both are re-exported at the crate root.
#![allow(missing_docs, clippy::all)]

/// autopipe.v1: the public API.
pub mod v1 {
    tonic::include_proto!("autopipe.v1");
}
/// The cluster-internal protocol.
pub mod internal {
    /// autopipe.internal.v1: workers, tasks, shuffle tickets, plan nodes and raft.
    pub mod v1 {
        tonic::include_proto!("autopipe.internal.v1");
    }
}
pub use internal::v1::*;
pub use v1::*;

/// The encoded `FileDescriptorSet` of every autopipe proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/autopipe_descriptor.bin"));

/// The services a client of the public API uses (the others are cluster-internal).
pub const PUBLIC_SERVICES: [&str; 2] = ["autopipe.v1.JobService", "autopipe.v1.AdminService"];

/// Lower-case short names of the public enums, as the CLI and the HTTP JSON API show
/// them: `WORKER_STATE_DRAINING` → `draining`, `SUCCEEDED` → `succeeded`.
pub trait ShortName: Sized {
    /// The value's short name (`unspecified` for the zero value).
    fn short_name(&self) -> String;
    /// The value a short name (any case) names.
    fn from_short_name(name: &str) -> Option<Self>;
    /// The short name of a raw field value; `unspecified` for an unknown one.
    fn name_of(raw: i32) -> String;
}

macro_rules! short_names {
    ($($t:ty => $prefix:literal),* $(,)?) => {$(
        impl ShortName for $t {
            fn short_name(&self) -> String {
                let full = self.as_str_name();
                full.strip_prefix($prefix).unwrap_or(full).to_ascii_lowercase()
            }
            fn from_short_name(name: &str) -> Option<Self> {
                Self::from_str_name(&format!("{}{}", $prefix, name.to_ascii_uppercase()))
            }
            fn name_of(raw: i32) -> String {
                Self::try_from(raw).map_or_else(|_| "unspecified".into(), |v| v.short_name())
            }
        }
    )*};
}

short_names! {
    v1::JobState => "",
    v1::ErrorClass => "",
    v1::WorkerState => "WORKER_STATE_",
    v1::StageKind => "STAGE_KIND_",
    v1::MemberRole => "MEMBER_ROLE_",
    v1::DecisionKind => "DECISION_KIND_",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_strip_the_enum_prefix_both_ways() {
        assert_eq!(WorkerState::Draining.short_name(), "draining");
        assert_eq!(DecisionKind::KafkaScaleUp.short_name(), "kafka_scale_up");
        assert_eq!(JobState::Succeeded.short_name(), "succeeded");
        assert_eq!(
            DecisionKind::from_short_name("skew_split"),
            Some(DecisionKind::SkewSplit)
        );
        assert_eq!(MemberRole::name_of(MemberRole::Leader as i32), "leader");
        assert_eq!(StageKind::name_of(99), "unspecified");
    }
}
