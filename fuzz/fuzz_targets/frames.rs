//! Peer bytes are hostile: decoding frames, hand-off specs and shell specs must never panic,
//! loop or allocate past `MAX_FRAME`, whatever arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reloadsup_protocol::{decode, FrameReader, Message, ShellSpec, WorkerSpec};

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new();
    reader.push(data);
    while let Ok(Some(_)) = reader.next_frame::<Message>() {}
    let _ = decode::<WorkerSpec>(data);
    let _ = decode::<ShellSpec>(data);
});
