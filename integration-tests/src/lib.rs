//! Sandbox, process and load helpers for the integration tests and the benchmark.
