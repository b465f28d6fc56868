//! The hidden roles of the reloadsup executable, run by the primary through `/proc/self/exe`.
//!
//! A role process is fresh and single-threaded: it may allocate and call anything before its
//! final exec, which is why the primary never runs user-facing setup between fork and exec.

pub(crate) mod keeper;
pub(crate) mod logger;
pub(crate) mod metrics;
pub(crate) mod worker;
