//! The one integration-test binary: every test runs the real `reloadsup` with real clients.
//!
//! Build the binaries first (`make test` does): `cargo build --workspace --bins --examples`.

mod console;
mod control;
mod core;
mod lifecycle;
