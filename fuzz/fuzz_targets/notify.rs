//! Notify datagrams come from the user's command: parsing one must never panic, and whatever
//! status it yields is bounded and free of control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reloadsup_protocol::notify::{parse, MAX_STATUS_CHARS};

fuzz_target!(|data: &[u8]| {
    if let Some(status) = parse(data).status {
        assert!(status.chars().count() <= MAX_STATUS_CHARS);
        assert!(!status.chars().any(char::is_control));
    }
});
