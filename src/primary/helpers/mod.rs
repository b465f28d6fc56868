//! The primary's specialised workers, one file each: the shell worker (`shell.rs`, the TLS
//! console), the keeper (`keeper.rs`, kills every worker's group and cgroup if the primary
//! dies), the logger (`logger.rs`, the workers' output) and the metrics worker (`metrics.rs`).
//! Each is a hidden role of this executable, spawned through `/proc/self/exe` with a link,
//! restarted with back-off by `state::roles`, replaced when it misbehaves, and carried across
//! an upgrade in place in its image.

pub(crate) mod keeper;
pub(crate) mod logger;
pub(crate) mod metrics;
pub(crate) mod shell;
