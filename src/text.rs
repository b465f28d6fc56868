//! The readable text forms of protocol messages (a progress line, the status table), shared by
//! `reloadsup ctl` and the console's shell worker so that neither depends on the other. Pure
//! functions of the message: no I/O.

use reloadsup_protocol::{Progress, Status};

// The console's line protocol, which the shell worker speaks and `reloadsup console` reads.
/// The prompt before each command, without a newline.
pub(crate) const PROMPT: &str = "> ";
/// The prompt for the password, without a newline.
pub(crate) const PASSWORD_PROMPT: &str = "Password: ";
/// Printed after a delay for a wrong password.
pub(crate) const ACCESS_DENIED: &str = "Access denied";
/// Every line that reports a failure starts with this.
pub(crate) const ERROR_PREFIX: &str = "error: ";

/// One line for a reload's progress.
pub(crate) fn progress_line(p: &Progress) -> String {
    match p {
        Progress::GenerationStarted {
            generation,
            workers,
        } => format!("starting generation {generation} with {workers} workers"),
        Progress::WorkerSpawned {
            generation,
            slot,
            pid,
        } => format!("  worker {slot} of generation {generation}: spawned as pid {pid}"),
        Progress::WorkerReady {
            generation,
            slot,
            pid,
        } => format!("  worker {slot} of generation {generation} (pid {pid}): ready"),
        Progress::Queued => "a reload is in progress; this one follows it".to_string(),
        Progress::Draining {
            generation,
            workers,
        } => format!("draining {workers} workers of generation {generation}"),
        Progress::Text(t) => t.clone(),
        Progress::Log { skipped, lines } => {
            let mut text = skipped_marker(*skipped);
            for l in lines {
                text.push_str(&reloadsup_protocol::notify::sanitize_log_line(l));
            }
            text.truncate(text.trim_end_matches('\n').len());
            text
        }
    }
}

/// `... N lines skipped` with its newline, or nothing for 0: what a log reader that did not
/// keep up is told in place of the lines it lost.
pub(crate) fn skipped_marker(skipped: u64) -> String {
    match skipped {
        0 => String::new(),
        1 => "... 1 line skipped\n".to_string(),
        n => format!("... {n} lines skipped\n"),
    }
}

/// The readable form of `status`.
pub(crate) fn status_table(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "instance:   {} (pid {})", s.name, s.pid);
    let _ = writeln!(
        out,
        "version:    {} ({} upgrades in place)",
        s.version, s.upgrades
    );
    let _ = writeln!(out, "generation: {}", s.generation);
    let _ = writeln!(
        out,
        "workers:    {} current, {} target, {} dead",
        s.current_workers, s.target_workers, s.dead_workers
    );
    for l in &s.listeners {
        let _ = writeln!(out, "listener:   {} {}", l.name, l.address);
    }
    if let Some(r) = &s.last_reload {
        let reason = if r.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", r.reason)
        };
        let _ = writeln!(
            out,
            "last reload: generation {} {}{reason}",
            r.generation,
            r.outcome.as_str()
        );
    }
    let _ = writeln!(
        out,
        "\n{:>4}  {:>8}  {:>4}  {:<9} {:>8}  {:>9}  STATUS",
        "SLOT", "PID", "GEN", "STATE", "RESTARTS", "UPTIME"
    );
    for w in &s.workers {
        let pid = if w.pid == 0 {
            "-".to_string()
        } else {
            w.pid.to_string()
        };
        let _ = writeln!(
            out,
            "{:>4}  {:>8}  {:>4}  {:<9} {:>8}  {:>9}  {}",
            w.slot,
            pid,
            w.generation,
            w.state.as_str(),
            w.restarts,
            uptime(w.uptime_ms),
            w.status
        );
    }
    out
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}
