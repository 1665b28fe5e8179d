//! The data lake: table formats the coordinator commits to (issue 15).

pub mod delta;
