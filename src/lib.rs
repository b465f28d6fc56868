//! reloadsup: a zero-downtime reload supervisor.
#![deny(unsafe_code)]
