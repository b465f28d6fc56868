//! A supervisor binary built on the reloadsup library, with the three console commands of the
//! original sketch (DESIGN.md section 7):
//!
//! - `foo 1 2 3` prints each word of argv on its own line: foo, 1, 2, 3;
//! - `bar foo` prints argv reversed (foo, bar), then asks the primary to restart everything;
//! - `baz` asks for a number and prints twice it: `21*2 = 42`;
//! - `panic` panics, to show that a panicking command ends only with an error message.
//!
//! Run it exactly like `reloadsup`:
//! `console_commands --admin 127.0.0.1:9443 --admin-password-hash H -- python3 -m http.server --fd {fd}`,
//! then `reloadsup console 127.0.0.1:9443`.

use reloadsup::shell::{Commands, Context, Outcome, Reply, Request};

fn foo(ctx: &mut Context) -> Result<(), String> {
    for word in ctx.args().to_vec() {
        ctx.println(&word);
    }
    Ok(())
}

fn bar(ctx: &mut Context) -> Result<(), String> {
    for word in ctx.args().iter().rev().cloned().collect::<Vec<_>>() {
        ctx.println(&word);
    }
    match ctx.request(Request::Restart)? {
        Reply::Reload(o) if o.outcome == Outcome::Succeeded => Ok(()),
        Reply::Reload(o) => Err(format!(
            "the restart's reload to generation {} {}: {}",
            o.generation,
            o.outcome.as_str(),
            o.reason
        )),
        Reply::Error(e) => Err(e),
        other => Err(format!("unexpected reply: {other:?}")),
    }
}

fn baz(ctx: &mut Context) -> Result<(), String> {
    let Some(line) = ctx.read_line("Give me a number: ") else {
        return Ok(());
    };
    let n: i64 = line
        .trim()
        .parse()
        .map_err(|_| format!("'{}' is not a whole number", line.trim()))?;
    match n.checked_mul(2) {
        Some(twice) => {
            ctx.println(&format!("{n}*2 = {twice}"));
            Ok(())
        }
        None => Err(format!("{n}*2 does not fit in 64 bits")),
    }
}

fn main() -> std::process::ExitCode {
    let commands = Commands::new()
        .command("foo", "print each word on its own line", foo)
        .command(
            "bar",
            "print the words reversed, then restart everything",
            bar,
        )
        .command("baz", "ask for a number and double it", baz)
        // A command with a bug costs only its own session: it ends with an error, the console
        // and every other session go on.
        .command(
            "panic",
            "panic on purpose (shows that the console survives)",
            |_| panic!("this command panics on purpose"),
        );
    reloadsup::main_with(commands)
}
