//! reloadsup: a zero-downtime reload supervisor.
//!
//! The binary is thin: [`main`] parses the command line, picks the role, and maps errors to
//! exit codes. See `ARCHITECTURE.md` for the codemap.
#![deny(unsafe_code)]
// The public surface is what a supervisor binary built on `main_with` needs, nothing more.
#![warn(unreachable_pub)]

mod address;
mod client;
mod config;
mod error;
mod logfile;
mod password;
mod primary;
mod roles;
pub mod shell;
mod sys;
mod text;
mod tls;
mod trusted;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

/// Runs reloadsup with the process's arguments: the run mode, a client, or a hidden role.
pub fn main() -> ExitCode {
    main_with(shell::Commands::default())
}

/// Like [`main`], for a supervisor binary built on the library: its admin console offers
/// `commands` besides the built-in ones.
pub fn main_with(commands: shell::Commands) -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let code = match args.get(1).and_then(|a| a.to_str()) {
        Some("__worker") => roles::worker::run(&args[2..]),
        Some("__shell") => shell::run_role(&args[2..], commands),
        Some("__keeper") => roles::keeper::run(&args[2..]),
        Some("__logger") => roles::logger::run(&args[2..]),
        Some("__metrics") => roles::metrics::run(&args[2..]),
        Some("__inspector") => roles::inspector::run(&args[2..]),
        Some("__preflight") => primary::handoff::preflight(),
        Some("__upgrade") => exit_code("reloadsup", resume_primary(&args)),
        Some("ctl") => exit_code("reloadsup ctl", client::ctl::main(args[1..].to_vec())),
        Some("console") => client::console::main(args[1..].to_vec()),
        Some("hash-password") => shell::auth::main(args[1..].to_vec()),
        _ => exit_code("reloadsup", run_primary(args)),
    };
    ExitCode::from(code)
}

fn init_logging() {
    use std::io::Write;
    let pid = std::process::id();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {:<5} reloadsup[{pid}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
}

fn run_primary(args: Vec<OsString>) -> Result<u8, error::Error> {
    // First of all, before any fd is opened: sockets from a socket activator become
    // close-on-exec and are checked.
    let inherited = primary::activation::take()?;
    let mut own = args.clone();
    let mut parsed = config::RunArgs::try_parse_from(args)?;
    if !inherited.is_empty() {
        // Carried on the command line, which a reload and an upgrade in place parse again.
        let adopted: Vec<String> = inherited.iter().map(|s| s.to_string()).collect();
        for (i, a) in adopted.iter().enumerate() {
            own.insert(1 + i, format!("--inherited-listener={a}").into());
        }
        parsed.inherited_listener = adopted;
    }
    let config = config::Config::from_args(parsed.clone())?;
    init_logging();
    for w in config.admin.iter().flat_map(|a| &a.warnings) {
        log::warn!("{w}");
    }
    Ok(primary::run(config, parsed, own, inherited)?)
}

/// The new image of an upgrade in place (`__upgrade FD`): the primary carries on.
fn resume_primary(args: &[OsString]) -> Result<u8, error::Error> {
    init_logging();
    Ok(primary::resume(args.get(2))?)
}

/// The one place where errors become exit codes (DESIGN.md section 3: 0 success, 2 bad usage
/// or config, 1 anything else), and where they are printed: clap prints its own, the primary's
/// fatal errors go to the log it already writes, the rest to stderr after `who`.
fn exit_code(who: &str, result: Result<u8, error::Error>) -> u8 {
    let e = match result {
        Ok(code) => return code,
        Err(e) => e,
    };
    match &e {
        error::Error::Cli(clap) => {
            let _ = clap.print();
        }
        error::Error::Fatal(fatal) => log::error!("{fatal}"),
        other => eprintln!("{who}: {other}"),
    }
    e.exit_code()
}

/// Parses a command line with clap; on `--help`/`--version` prints and gives exit code 0, on a
/// usage error prints it and gives exit code 2.
pub(crate) fn parse_args<T: Parser>(args: Vec<OsString>) -> Result<T, u8> {
    T::try_parse_from(args).map_err(|e| exit_code("reloadsup", Err(e.into())))
}

/// Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the decoders that read
/// another process's bytes, reached without making the modules behind them public.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Lines typed by a logged-in console client, each cut at the session's line limit.
    pub fn console_lines(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        for line in text.split('\n') {
            if line.len() <= crate::shell::MAX_LINE {
                let _ = crate::shell::console::parse(line);
            }
        }
    }

    /// A config file (`-c PATH`) through the whole validation: a `Config` or an error.
    pub fn config_file(path: &std::path::Path) {
        let args = crate::config::RunArgs {
            config: Some(path.to_path_buf()),
            ..crate::config::RunArgs::default()
        };
        let _ = crate::config::Config::from_args(args);
    }
}
