//! Console lines come from whoever reaches the admin port and logs in. Each line (at most
//! `MAX_LINE` bytes, as the session cuts them) goes through the console's parser, which must
//! answer every one with a command or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
fuzz_target!(|data: &[u8]| reloadsup::fuzzing::console_lines(data));
