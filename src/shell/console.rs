//! The console's line language, apart from any I/O: words, built-in commands, and how the
//! primary's replies are shown. Pure functions, unit tested as tables.
//!
//! Output lines that start with `error: ` mark a failed command; `reloadsup console -c` exits
//! non-zero when it sees one.

use std::fmt::Write as _;

use reloadsup_protocol::{LogQuery, Outcome, Reply, Request, Status};

pub(crate) use crate::text::{ACCESS_DENIED, ERROR_PREFIX, PASSWORD_PROMPT, PROMPT};

/// How a reply to a built-in command is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Show {
    Info,
    List,
    Status,
    Done,
    Reload,
    Restart,
    /// `logs [N]`: the lines come as progress; the reply shows nothing.
    Logs,
    /// `logs -f`: like `Logs`, until any line typed ends it.
    Follow,
    /// Shows nothing and leaves the session as it is (the reply to ending a follow).
    Silent,
}

/// What a line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// Nothing (blank or a comment).
    Empty,
    Help,
    Exit,
    /// A built-in command answered by the primary.
    Ask(Request, Show),
    /// Not a built-in: a custom command, or unknown. argv with the name first.
    Other(Vec<String>),
}

/// Splits a line into words like a shell (quotes, backslashes, `#` comments) and recognises
/// the built-in commands.
pub(crate) fn parse(line: &str) -> Result<Line, String> {
    let words = shlex::split(line).ok_or_else(|| "unbalanced quotes".to_string())?;
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let count = |arg: Option<&&str>, default: Option<u32>| -> Result<u32, String> {
        match (arg, default) {
            (Some(a), _) => a
                .parse::<u32>()
                .map_err(|_| format!("'{a}' is not a number of workers")),
            (None, Some(d)) => Ok(d),
            (None, None) => Err("missing the number of workers".into()),
        }
    };
    let extra = |n: usize| -> Result<(), String> {
        if w.len() > n {
            Err(format!("unexpected argument '{}'", w[n]))
        } else {
            Ok(())
        }
    };
    Ok(match w.as_slice() {
        [] => Line::Empty,
        ["help", ..] => Line::Help,
        [".exit", ..] => Line::Exit,
        ["reload", "--canary", n, ..] => {
            extra(3)?;
            let canary = n
                .parse::<u32>()
                .map_err(|_| format!("'{n}' is not a number of workers"))?;
            Line::Ask(Request::ReloadWith { canary }, Show::Reload)
        }
        ["reload", "--canary"] => return Err("missing the number of canary workers".into()),
        ["reload", ..] => {
            extra(1)?;
            Line::Ask(Request::Reload, Show::Reload)
        }
        ["restart", ..] => {
            extra(1)?;
            Line::Ask(Request::Restart, Show::Restart)
        }
        ["status", ..] => {
            extra(1)?;
            Line::Ask(Request::Status, Show::Status)
        }
        ["logs", args @ ..] => {
            let mut follow = false;
            let mut lines = None;
            for a in args {
                match *a {
                    "-f" | "--follow" => follow = true,
                    n if lines.is_none() => {
                        lines = Some(
                            n.parse::<u32>()
                                .map_err(|_| format!("'{n}' is not a number of lines"))?,
                        )
                    }
                    other => return Err(format!("unexpected argument '{other}'")),
                }
            }
            let query = LogQuery {
                lines: lines.unwrap_or(10),
                follow,
                worker: None,
                generation: None,
            };
            Line::Ask(
                Request::Logs(query),
                if follow { Show::Follow } else { Show::Logs },
            )
        }
        ["upgrade", ..] => {
            extra(1)?;
            Line::Ask(Request::Upgrade { binary: None }, Show::Done)
        }
        ["worker"] => return Err("worker what? (info, list, revive, scale N, add [N], remove [N])".into()),
        ["worker", sub, ..] => match *sub {
            "info" => {
                extra(2)?;
                Line::Ask(Request::Status, Show::Info)
            }
            "list" => {
                extra(2)?;
                Line::Ask(Request::Status, Show::List)
            }
            "revive" => {
                extra(2)?;
                Line::Ask(Request::Revive, Show::Done)
            }
            "scale" => {
                extra(3)?;
                Line::Ask(
                    Request::Scale {
                        workers: count(w.get(2), None)?,
                    },
                    Show::Done,
                )
            }
            "add" => {
                extra(3)?;
                Line::Ask(
                    Request::Add {
                        workers: count(w.get(2), Some(1))?,
                    },
                    Show::Done,
                )
            }
            "remove" => {
                extra(3)?;
                Line::Ask(
                    Request::Remove {
                        workers: count(w.get(2), Some(1))?,
                    },
                    Show::Done,
                )
            }
            other => {
                return Err(format!(
                    "unknown worker command '{other}' (info, list, revive, scale N, add [N], remove [N])"
                ))
            }
        },
        _ => Line::Other(words),
    })
}

pub(crate) const BUILTIN_HELP: &[(&str, &str)] = &[
    ("help", "show this list"),
    (
        "worker info",
        "how many workers run, are wanted, and are dead",
    ),
    ("worker list", "one line per worker"),
    ("worker revive", "restart the dead workers"),
    ("worker scale N", "run N workers"),
    ("worker add [N]", "run N (default 1) workers more"),
    ("worker remove [N]", "run N (default 1) workers fewer"),
    (
        "reload",
        "start a new generation of workers and wait for it",
    ),
    (
        "reload --canary N",
        "start N new workers first, the rest once they are ready (and stable)",
    ),
    (
        "restart",
        "upgrade the supervisor, reload every worker and replace this console (the session ends)",
    ),
    (
        "upgrade",
        "re-exec the supervisor in place from its binary on disk (same pid, workers kept)",
    ),
    ("status", "the whole state"),
    ("logs [N]", "the workers' last N (default 10) output lines"),
    ("logs -f [N]", "then every new line, until you type a line"),
    (".exit", "leave"),
];

/// The `help` text: built-ins, then custom commands.
pub(crate) fn help<'a>(custom: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("Commands:\n");
    for (name, text) in BUILTIN_HELP {
        let _ = writeln!(out, "  {name:<18} {text}");
    }
    let mut first = true;
    for (name, text) in custom {
        if first {
            out.push_str("Custom commands:\n");
            first = false;
        }
        let _ = writeln!(out, "  {name:<18} {text}");
    }
    out.push_str("Words split like a shell (quotes work); '#' starts a comment.\n");
    out
}

/// The text for a reply to a built-in command. Failures start with [`ERROR_PREFIX`].
pub(crate) fn show(kind: Show, reply: &Reply) -> String {
    match (kind, reply) {
        (_, Reply::Error(text)) => format!("{ERROR_PREFIX}{text}\n"),
        (Show::Info, Reply::Status(s)) => worker_info(s),
        (Show::List, Reply::Status(s)) => worker_list(s),
        (Show::Status, Reply::Status(s)) => crate::text::status_table(s),
        (Show::Logs | Show::Follow | Show::Silent, Reply::Done(_)) => String::new(),
        (_, Reply::Done(text)) => format!("{text}\n"),
        (_, Reply::Reload(o)) => match o.outcome {
            // The reason of a success is how long it was stable (`--stable-for`), if at all.
            Outcome::Succeeded if !o.reason.is_empty() => {
                format!("generation {} is serving ({})\n", o.generation, o.reason)
            }
            Outcome::Succeeded => format!("generation {} is serving\n", o.generation),
            other => {
                let reason = if o.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", o.reason)
                };
                format!(
                    "{ERROR_PREFIX}reload to generation {} {}{reason}\n",
                    o.generation,
                    other.as_str()
                )
            }
        },
        (_, other) => format!("{ERROR_PREFIX}unexpected reply from the primary: {other:?}\n"),
    }
}

/// `worker info`: the three lines of DESIGN.md section 7, then more detail.
pub(crate) fn worker_info(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>17}: {}", "Current Workers", s.current_workers);
    let _ = writeln!(out, "{:>17}: {}", "Target Workers", s.target_workers);
    let _ = writeln!(out, "{:>17}: {}", "Dead Workers", s.dead_workers);
    let _ = writeln!(out, "{:>17}: {}", "Generation", s.generation);
    if let Some(r) = &s.last_reload {
        let _ = writeln!(
            out,
            "{:>17}: generation {} {}",
            "Last Reload",
            r.generation,
            r.outcome.as_str()
        );
    }
    out
}

/// `worker list`: one line per worker.
pub(crate) fn worker_list(s: &Status) -> String {
    let table = crate::text::status_table(s);
    // The worker table is the part after the blank line of the status table.
    match table.split_once("\n\n") {
        Some((_, workers)) => workers.to_string(),
        None => table,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reloadsup_protocol::{ReloadOutcome, WorkerInfo, WorkerState};

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lines_parse_like_a_shell() {
        let table: &[(&str, Result<Line, ()>)] = &[
            ("", Ok(Line::Empty)),
            ("   # just a comment", Ok(Line::Empty)),
            ("help", Ok(Line::Help)),
            (".exit", Ok(Line::Exit)),
            ("worker info", Ok(Line::Ask(Request::Status, Show::Info))),
            (
                "worker revive  # revive the dead workers",
                Ok(Line::Ask(Request::Revive, Show::Done)),
            ),
            (
                "worker scale 4",
                Ok(Line::Ask(Request::Scale { workers: 4 }, Show::Done)),
            ),
            (
                "worker add",
                Ok(Line::Ask(Request::Add { workers: 1 }, Show::Done)),
            ),
            (
                "worker remove 2",
                Ok(Line::Ask(Request::Remove { workers: 2 }, Show::Done)),
            ),
            ("worker scale", Err(())),
            ("worker scale -1", Err(())),
            ("worker scale 1 2", Err(())),
            ("worker fly", Err(())),
            ("worker", Err(())),
            ("reload now", Err(())),
            ("reload", Ok(Line::Ask(Request::Reload, Show::Reload))),
            (
                "reload --canary 1",
                Ok(Line::Ask(Request::ReloadWith { canary: 1 }, Show::Reload)),
            ),
            ("reload --canary", Err(())),
            ("reload --canary x", Err(())),
            ("reload --canary 1 2", Err(())),
            ("restart", Ok(Line::Ask(Request::Restart, Show::Restart))),
            ("status", Ok(Line::Ask(Request::Status, Show::Status))),
            (
                "upgrade",
                Ok(Line::Ask(Request::Upgrade { binary: None }, Show::Done)),
            ),
            ("upgrade now", Err(())),
            (
                "logs",
                Ok(Line::Ask(
                    Request::Logs(LogQuery {
                        lines: 10,
                        follow: false,
                        worker: None,
                        generation: None,
                    }),
                    Show::Logs,
                )),
            ),
            (
                "logs -f 3",
                Ok(Line::Ask(
                    Request::Logs(LogQuery {
                        lines: 3,
                        follow: true,
                        worker: None,
                        generation: None,
                    }),
                    Show::Follow,
                )),
            ),
            ("logs 3 4", Err(())),
            ("logs many", Err(())),
            ("foo 1 2 3", Ok(Line::Other(words(&["foo", "1", "2", "3"])))),
            (
                "foo 'a b' \"c d\" e\\ f # x",
                Ok(Line::Other(words(&["foo", "a b", "c d", "e f"]))),
            ),
            ("foo 'a b", Err(())),
        ];
        for (line, want) in table {
            let got = parse(line).map_err(|_| ());
            assert_eq!(&got, want, "{line:?}");
        }
    }

    #[test]
    fn worker_info_has_the_exact_three_lines() {
        let s = Status {
            pid: 1,
            name: "x".into(),
            generation: 2,
            target_workers: 4,
            current_workers: 3,
            dead_workers: 1,
            listeners: vec![],
            workers: vec![WorkerInfo {
                slot: 0,
                pid: 0,
                generation: 2,
                state: WorkerState::Dead,
                restarts: 5,
                uptime_ms: 0,
                status: "crashed".into(),
            }],
            last_reload: None,
            version: "0.1.0".into(),
            upgrades: 0,
        };
        let text = worker_info(&s);
        assert!(
            text.starts_with("  Current Workers: 3\n   Target Workers: 4\n     Dead Workers: 1\n")
        );
        assert!(worker_list(&s).contains("dead"));
    }

    #[test]
    fn failures_start_with_error() {
        let rolled = Reply::Reload(ReloadOutcome {
            generation: 3,
            outcome: Outcome::RolledBack,
            reason: "worker 0 exited".into(),
        });
        assert!(show(Show::Reload, &rolled).starts_with(ERROR_PREFIX));
        assert!(show(Show::Done, &Reply::Error("no".into())).starts_with(ERROR_PREFIX));
        assert_eq!(show(Show::Done, &Reply::Done("ok".into())), "ok\n");
    }
}
