//! The config file (`-c FILE`): any bytes must give a `Config` or an error naming a key,
//! never a panic. The input goes through a file because that is the only way in; the file is
//! per process, and libFuzzer runs one input at a time.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path =
        std::env::temp_dir().join(format!("reloadsup-fuzz-config-{}.toml", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    reloadsup::fuzzing::config_file(&path);
    let _ = std::fs::remove_file(&path);
});
