//! Shared bits of the example servers (nothing yet).
