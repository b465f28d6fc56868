//! The hand-off messages a role process reads from the primary: a worker's bare `WorkerSpec`
//! and `FdBatch` messages, the shell worker's framed `ShellSpec` followed by control
//! frames, and the metrics worker's `MetricsSpec` and `MetricsMessage`s (which the primary
//! decodes from the worker too). A role trusts its parent, but a decoder that panics on a
//! short or stale message (a primary of another version) must not be what tells us.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reloadsup_protocol::{
    decode, FdBatch, FrameReader, Message, MetricsMessage, MetricsSpec, ShellSpec, WorkerSpec,
};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<WorkerSpec>(data);
    let _ = decode::<FdBatch>(data);
    let _ = decode::<MetricsSpec>(data);
    let _ = decode::<MetricsMessage>(data);
    let mut reader = FrameReader::new();
    reader.push(data);
    if let Ok(Some(_)) = reader.next_frame::<ShellSpec>() {
        while let Ok(Some(_)) = reader.next_frame::<Message>() {}
    }
});
