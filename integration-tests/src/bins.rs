//! Where the binaries under test are: the cargo target directory of the running executable.
//!
//! A test executable lives in `<target>/<profile>/deps/`, the bench and demo binaries in
//! `<target>/<profile>/`; the supervisor is `<target>/<profile>/reloadsup` and the examples are in
//! `<target>/<profile>/examples/`. `RELOADSUP_BIN` and `RELOADSUP_EXAMPLES_DIR` override both.

use std::path::PathBuf;

/// `<target>/<profile>`, found from the running executable.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    let mut dir = exe
        .parent()
        .expect("an executable lives in a directory")
        .to_path_buf();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    dir
}

/// The `reloadsup` binary.
pub fn reloadsup() -> PathBuf {
    let path = std::env::var_os("RELOADSUP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("reloadsup"));
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build --workspace --bins --examples) or set RELOADSUP_BIN",
        path.display()
    );
    path
}

/// The example binary `name` (hello, probe).
pub fn example(name: &str) -> PathBuf {
    let dir = std::env::var_os("RELOADSUP_EXAMPLES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile_dir().join("examples"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build --workspace --bins --examples) or set RELOADSUP_EXAMPLES_DIR",
        path.display()
    );
    path
}

/// The workspace root (holds `examples/python/server.py`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `examples/python/server.py`.
pub fn python_server() -> PathBuf {
    workspace_root().join("examples/python/server.py")
}
