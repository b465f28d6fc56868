//! The reloadsup executable: everything lives in the library so that a supervisor binary
//! built on it (with its own console commands) behaves the same.

fn main() -> std::process::ExitCode {
    reloadsup::main()
}
