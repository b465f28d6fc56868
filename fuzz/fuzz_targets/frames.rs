//! Control frames are hostile: a `ctl` client of our uid, the shell worker, or the primary as
//! seen by either of them. A `FrameReader` fed any bytes must never panic, loop or allocate past
//! `MAX_FRAME`; it yields `Message`s until it runs dry or fails.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reloadsup_protocol::{check_hello, FrameReader, Message};

fuzz_target!(|data: &[u8]| {
    let mut reader = FrameReader::new();
    // In two pushes, as bytes arrive from a socket: a frame split across reads must decode the
    // same as a whole one.
    let half = data.len() / 2;
    reader.push(&data[..half]);
    while let Ok(Some(msg)) = reader.next_frame::<Message>() {
        let _ = check_hello(&msg);
    }
    reader.push(&data[half..]);
    while let Ok(Some(msg)) = reader.next_frame::<Message>() {
        let _ = check_hello(&msg);
    }
});
