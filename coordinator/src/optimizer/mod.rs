//! Self-optimizing rules: each a pure function over the replicated state whose
//! result the leader proposes as commands and records as a decision (what, why, the
//! inputs it read; the effect is filled in once measured).

pub mod memory;
pub mod partitions;
