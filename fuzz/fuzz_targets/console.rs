//! Console lines come from whoever reaches the admin port and logs in. Each line (at most
//! `MAX_LINE` bytes, as the session cuts them) goes through the console's parser, which must
//! answer every one with a command or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reloadsup::shell::{console, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        if line.len() <= MAX_LINE {
            let _ = console::parse(line);
        }
    }
});
