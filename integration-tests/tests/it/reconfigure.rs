//! Issue 8, item 5: a reload re-reads `--config`. What changes takes effect in the next
//! generation; a listener whose address is unchanged keeps its kernel socket; a file that
//! does not parse or validate, or a listener that cannot be bound, refuses the reload and
//! changes nothing; keys that cannot change at run time are reported.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use reloadsup_integration_tests::{
    bins, output_with_timeout, proc, wait_for, wait_until, Run, Sandbox, Supervisor, DEADLINE,
};
use serde_json::Value;

/// A config file running `probe` with notify readiness and short timeouts, plus `extra` lines.
fn config(listen: &[&str], workers: u32, extra: &str) -> String {
    let listen: Vec<String> = listen.iter().map(|l| format!("{l:?}")).collect();
    format!(
        "listen = [{}]\nworkers = {workers}\nready = \"notify\"\nready-timeout = \"10s\"\ngraceful-timeout = \"5s\"\ncommand = [{:?}]\n{extra}",
        listen.join(", "),
        bins::example("probe").to_string_lossy(),
    )
}

/// Starts reloadsup with only `-c FILE` (and the sandbox's state dir, pidfile and name).
fn start(sandbox: &Sandbox, text: &str, workers: usize) -> (Supervisor, PathBuf) {
    let file = sandbox.write("web.toml", text);
    let mut sup = Run::new(Vec::<String>::new())
        .arg("-c")
        .arg(&file)
        .start(sandbox);
    sup.wait_ready(1, workers);
    wait_until(DEADLINE, "every worker ready in status", || {
        live_workers(&sup.status_json(), 1).len() == workers
    });
    (sup, file)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The pids of `generation`'s ready workers, by slot.
fn live_workers(status: &Value, generation: u64) -> Vec<u32> {
    let mut rows: Vec<(u64, u32)> = status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["generation"] == generation && w["state"] == "ready")
        .filter_map(|w| Some((w["slot"].as_u64()?, w["pid"].as_u64()? as u32)))
        .collect();
    rows.sort_unstable();
    rows.into_iter().map(|(_, p)| p).collect()
}

/// `(name, address)` of the listeners in `ctl status --json`.
fn listeners(status: &Value) -> Vec<(String, String)> {
    status["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["name"].as_str().unwrap_or_default().to_string(),
                l["address"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn addr(address: &str) -> SocketAddr {
    address.trim_start_matches("tcp://").parse().unwrap()
}

/// The socket inode at `fd` of `pid`, as in `socket:[INODE]`.
fn inode(pid: u32, fd: i32) -> String {
    proc::fds_of(pid)
        .into_iter()
        .find(|(f, _)| *f == fd)
        .map(|(_, t)| t)
        .filter(|t| t.starts_with("socket:"))
        .unwrap_or_else(|| panic!("pid {pid} has no socket at fd {fd}"))
}

/// The sockets the primary holds.
fn sockets_of(pid: u32) -> Vec<String> {
    proc::fds_of(pid)
        .into_iter()
        .map(|(_, t)| t)
        .filter(|t| t.starts_with("socket:"))
        .collect()
}

/// What a refused reload must leave alone: the generation, the worker pids, the listeners.
fn snapshot(sup: &Supervisor) -> (Value, Vec<u32>, Vec<(String, String)>) {
    let s = sup.status_json();
    let g = s["generation"].clone();
    let pids = live_workers(&s, g.as_u64().unwrap_or(0));
    let l = listeners(&s);
    (g, pids, l)
}

#[test]
fn a_reload_applies_workers_env_and_listeners_from_the_config_and_keeps_the_unchanged_socket() {
    let sandbox = Sandbox::new("reconf-apply");
    let (mut sup, _) = start(
        &sandbox,
        &config(
            &["keep=tcp://127.0.0.1:0", "gone=tcp://127.0.0.1:0"],
            2,
            "env = [\"COLOR=red\"]\n",
        ),
        2,
    );
    let before = sup.status_json();
    let old = live_workers(&before, 1);
    let old_listeners = listeners(&before);
    assert_eq!(old_listeners[0].0, "keep");
    let keep_inode = inode(old[0], 3);
    let gone_inode = inode(old[0], 4);
    assert!(sockets_of(sup.pid()).contains(&keep_inode));
    let gone = addr(&old_listeners[1].1);
    assert_eq!(proc::environ_of(old[0])["COLOR"], "red");

    sandbox.write(
        "web.toml",
        &config(
            &["keep=tcp://127.0.0.1:0", "added=tcp://127.0.0.1:0"],
            3,
            "env = [\"COLOR=blue\"]\n",
        ),
    );
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "ctl reload: {}", text(&out));
    assert!(
        text(&out).contains("generation 2 is serving"),
        "{}",
        text(&out)
    );

    let after = sup.status_json();
    let new = live_workers(&after, 2);
    assert_eq!(new.len(), 3, "workers 2 -> 3: {after}");
    assert_eq!(after["target_workers"], 3);
    let new_listeners = listeners(&after);
    assert_eq!(
        new_listeners[0], old_listeners[0],
        "the kept listener's address"
    );
    assert_eq!(new_listeners[1].0, "added");
    for &pid in &new {
        assert_eq!(inode(pid, 3), keep_inode, "the same kernel socket at fd 3");
        assert_ne!(inode(pid, 4), gone_inode, "fd 4 is the added listener");
        let env = proc::environ_of(pid);
        assert_eq!(env["COLOR"], "blue");
        assert_eq!(env["LISTEN_FDS"], "2");
        assert_eq!(env["LISTEN_FDNAMES"], "keep:added");
        assert!(!proc::fds_of(pid).iter().any(|(fd, _)| *fd == 5), "no fd 5");
    }
    assert!(TcpStream::connect(addr(&new_listeners[0].1)).is_ok());
    assert!(TcpStream::connect(addr(&new_listeners[1].1)).is_ok());
    // The removed listener is closed once the last worker that got it is gone.
    wait_until(DEADLINE, "the removed listener to be closed", || {
        !sockets_of(sup.pid()).contains(&gone_inode) && old.iter().all(|&p| !proc::is_alive(p))
    });
    assert!(TcpStream::connect(gone).is_err(), "{gone} is closed");
    assert!(sockets_of(sup.pid()).contains(&keep_inode));
    sup.wait_for_log("listener gone (tcp://", DEADLINE);
}

#[test]
fn a_config_that_does_not_parse_or_validate_refuses_the_reload_and_changes_nothing() {
    let sandbox = Sandbox::new("reconf-refused");
    let good = config(&["tcp://127.0.0.1:0"], 2, "");
    let (sup, _) = start(&sandbox, &good, 2);
    let before = snapshot(&sup);
    for (bad, needle) in [
        // A syntax error names its line.
        (format!("{good}workers = = 3\n"), "line 7"),
        (good.replace("workers = 2", "workers = -1"), "line 2"),
        (format!("{good}wrokers = 3\n"), "wrokers"),
        (good.replace("\"notify\"", "\"soon\""), "config key 'ready'"),
    ] {
        sandbox.write("web.toml", &bad);
        let out = sup.ctl(&["reload"]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", text(&out));
        let said = text(&out);
        assert!(
            said.contains("refused") && said.contains(needle),
            "{needle}: {said}"
        );
        assert_eq!(snapshot(&sup), before, "nothing changed after {needle}");
    }
    // The same through SIGHUP: refused, logged, shown as the last reload.
    sandbox.write("web.toml", &format!("{good}workers = = 3\n"));
    sup.signal(libc::SIGHUP);
    wait_until(DEADLINE, "the refused SIGHUP reload in status", || {
        sup.status_json()["last_reload"]["outcome"] == "refused"
            && sup.count_in_log("reload refused: ") == 5
    });
    assert!(sup.status_json()["last_reload"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("line 7")));
    assert_eq!(snapshot(&sup), before, "nothing changed after SIGHUP");
    // A good file afterwards reloads as usual.
    sandbox.write("web.toml", &good);
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_new_listener_that_cannot_be_bound_refuses_the_reload() {
    let sandbox = Sandbox::new("reconf-bind");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let (sup, _) = start(&sandbox, &config(&["web=tcp://127.0.0.1:0"], 1, ""), 1);
    let before = snapshot(&sup);
    let primary_sockets = sockets_of(sup.pid()).len();
    sandbox.write(
        "web.toml",
        &config(
            &[
                "web=tcp://127.0.0.1:0",
                "free=tcp://127.0.0.1:0",
                &format!("busy=tcp://{taken_addr}"),
            ],
            1,
            "",
        ),
    );
    let out = sup.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "refused: config key 'listen': busy: unable to bind tcp://{taken_addr}: "
        )),
        "{said}"
    );
    assert_eq!(snapshot(&sup), before);
    // The listener bound before the one that failed was closed again.
    assert_eq!(sockets_of(sup.pid()).len(), primary_sockets);
}

#[test]
fn keys_that_cannot_change_at_run_time_are_reported_and_kept() {
    let sandbox = Sandbox::new("reconf-fixed");
    let state = sandbox.join("state");
    let head = format!("name = \"t\"\nstate-dir = {:?}\n", state.to_string_lossy());
    let body = config(&["tcp://127.0.0.1:0"], 1, "");
    let file = sandbox.write("web.toml", &format!("{head}{body}"));
    let mut sup = Run::new(Vec::<String>::new())
        .bare()
        .arg("-c")
        .arg(&file)
        .start(&sandbox);
    sup.wait_ready(1, 1);
    let other = sandbox.join("state2");
    sandbox.write(
        "web.toml",
        &format!(
            "name = \"t2\"\nstate-dir = {:?}\n{}",
            other.to_string_lossy(),
            body.replace("workers = 1", "workers = 2")
        ),
    );
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for key in ["name", "state-dir"] {
        let line = format!("config key '{key}' cannot change at run time");
        assert!(said.contains(&line), "{key}: {said}");
        assert_eq!(sup.count_in_log(&line), 1, "{key} in the log");
    }
    // What can change did.
    let status = sup.status_json();
    assert_eq!(status["name"], "t", "the running name stays");
    assert_eq!(live_workers(&status, 2).len(), 2);
    assert!(!other.exists(), "no second state directory");
    assert!(state.join("control.sock").exists());
}

/// `reloadsup hash-password` with the password on standard input.
fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(bins::reloadsup())
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run reloadsup hash-password");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The primary's live child running the `__shell` role.
fn shell_pid(primary: u32) -> Option<u32> {
    proc::children_of(primary).into_iter().find(|&p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| c.split(|&b| b == 0).any(|a| a == b"__shell"))
            .unwrap_or(false)
            && !proc::is_zombie(p)
    })
}

/// The console's address and certificate fingerprint, from the log, once the shell listens.
fn console_address(sup: &mut Supervisor) -> (String, String) {
    let line = sup.wait_for_log("admin console on ", DEADLINE);
    let rest = &line[line.find("admin console on ").unwrap() + "admin console on ".len()..];
    let addr = rest.split_whitespace().next().unwrap().to_string();
    let fp = &line[line.find("fingerprint ").unwrap() + "fingerprint ".len()..];
    let fp = fp
        .trim_end_matches(|c: char| c == ')' || c.is_whitespace())
        .to_string();
    sup.wait_for_log("shell worker listening on", DEADLINE);
    (addr, fp)
}

fn console(addr: &str, fingerprint: &str, password: &str, line: &str) -> Output {
    output_with_timeout(
        Command::new(bins::reloadsup())
            .args(["console", "--fingerprint", fingerprint, "-c", line, addr])
            .env("RELOADSUP_PASSWORD", password),
        Duration::from_secs(60),
    )
}

#[test]
fn new_console_commands_and_password_replace_the_shell_worker() {
    let sandbox = Sandbox::new("reconf-shell");
    let admin = |hash: &str, word: &str| {
        format!(
            "admin = \"127.0.0.1:0\"\nadmin-password-hash = {hash:?}\n[commands.greet]\nrun = [\"/bin/echo\", {word:?}]\n"
        )
    };
    let (one, two) = (hash_password("first pw"), hash_password("second pw"));
    let body = config(&["tcp://127.0.0.1:0"], 1, "");
    let (mut sup, _) = start(&sandbox, &format!("{body}{}", admin(&one, "hello-one")), 1);
    let (addr, fp) = console_address(&mut sup);
    let first = shell_pid(sup.pid()).expect("a shell worker");
    let out = console(&addr, &fp, "first pw", "greet");
    assert!(text(&out).contains("hello-one"), "{}", text(&out));
    let workers = live_workers(&sup.status_json(), 1);

    sandbox.write("web.toml", &format!("{body}{}", admin(&two, "hello-two")));
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let second = wait_for(DEADLINE, "a new shell worker", || {
        shell_pid(sup.pid()).filter(|&p| p != first)
    });
    assert!(!proc::is_alive(first) || proc::is_zombie(first));
    sup.wait_for_nth_log("shell worker listening on", 2, DEADLINE);
    let out = console(&addr, &fp, "second pw", "greet");
    assert!(text(&out).contains("hello-two"), "{}", text(&out));
    let out = console(&addr, &fp, "first pw", "greet");
    assert!(
        !text(&out).contains("hello-"),
        "the old password: {}",
        text(&out)
    );
    assert_eq!(shell_pid(sup.pid()), Some(second));
    // The workers were reloaded as usual.
    assert!(workers
        .iter()
        .all(|&p| !live_workers(&sup.status_json(), 2).contains(&p)));
    // The console's `reload` re-reads the file too, and says why it was refused.
    sandbox.write("web.toml", &format!("{body}workers = = 1\n"));
    let out = console(&addr, &fp, "second pw", "reload");
    assert!(
        text(&out).contains("reload to generation 3 refused: --config"),
        "{}",
        text(&out)
    );
    assert_eq!(sup.status_json()["generation"], 2);
    assert_eq!(shell_pid(sup.pid()), Some(second), "nothing changed");
}

#[test]
fn a_listener_re_added_while_a_draining_generation_holds_it_takes_its_socket_back() {
    let sandbox = Sandbox::new("reconf-readd");
    // Workers that ignore the stop signal keep their generation draining for the whole test.
    let ignoring = |listen: &[&str]| {
        let probe = format!("{:?}", bins::example("probe").to_string_lossy());
        config(listen, 1, "")
            .replace("graceful-timeout = \"5s\"", "graceful-timeout = \"10m\"")
            .replace(
                &format!("[{probe}]"),
                &format!("[{probe}, \"--ignore-term\"]"),
            )
    };
    let both = ["web=tcp://127.0.0.1:0", "extra=tcp://127.0.0.1:0"];
    assert!(ignoring(&both).contains("\"--ignore-term\"]"));
    let (sup, _) = start(&sandbox, &ignoring(&both), 1);
    let first = live_workers(&sup.status_json(), 1)[0];
    let extra_inode = inode(first, 4);
    let extra_addr = listeners(&sup.status_json())[1].1.clone();

    sandbox.write("web.toml", &ignoring(&["web=tcp://127.0.0.1:0"]));
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(proc::is_alive(first), "generation 1 still drains");
    assert_eq!(listeners(&sup.status_json()).len(), 1);
    assert!(
        sockets_of(sup.pid()).contains(&extra_inode),
        "held for generation 1"
    );

    sandbox.write("web.toml", &ignoring(&both));
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let third = live_workers(&sup.status_json(), 3)[0];
    assert_eq!(
        inode(third, 4),
        extra_inode,
        "the same socket, not a new one"
    );
    assert_eq!(listeners(&sup.status_json())[1].1, extra_addr);
}

#[test]
fn a_spare_started_before_the_change_runs_the_new_spec_and_prespawn_follows_the_config() {
    let sandbox = Sandbox::new("reconf-spare");
    let with = |color: &str, prespawn: u32| {
        config(
            &["tcp://127.0.0.1:0"],
            1,
            &format!("env = [\"COLOR={color}\"]\nprespawn = {prespawn}\n"),
        )
    };
    let (sup, _) = start(&sandbox, &with("red", 2), 1);
    let worker = live_workers(&sup.status_json(), 1)[0];
    // The worker and two spares (the keeper is not counted).
    let spares: Vec<u32> = sup
        .wait_workers(3)
        .into_iter()
        .filter(|&p| p != worker)
        .collect();

    sandbox.write("web.toml", &with("blue", 2));
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let new = live_workers(&sup.status_json(), 2);
    assert!(spares.contains(&new[0]), "generation 2 runs in a spare");
    assert_eq!(proc::environ_of(new[0])["COLOR"], "blue");
    // Generation 1 drained and the spares topped up again.
    sup.wait_workers(3);

    // prespawn 2 -> 0: the spare generation 3 does not use is retired.
    sandbox.write("web.toml", &with("blue", 0));
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let third = live_workers(&sup.status_json(), 3);
    assert_eq!(sup.wait_workers(1), third);
}

#[test]
fn readiness_and_command_changes_apply_to_the_next_generation() {
    let sandbox = Sandbox::new("reconf-ready");
    let probe = format!("{:?}", bins::example("probe").to_string_lossy());
    let with = |ready: &str, arg: &str| {
        config(&["tcp://127.0.0.1:0"], 1, "")
            .replace("\"notify\"", &format!("{ready:?}"))
            .replace(&format!("[{probe}]"), &format!("[{probe}, {arg:?}]"))
    };
    let (sup, _) = start(&sandbox, &with("delay:100ms", "first"), 1);
    let old = live_workers(&sup.status_json(), 1)[0];
    assert!(!proc::environ_of(old).contains_key("NOTIFY_SOCKET"));

    // To notify: the new worker gets a notify socket and is ready by it (without one it would
    // miss its 10 s ready timeout and the reload would be rolled back).
    sandbox.write("web.toml", &with("notify", "second"));
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let new = live_workers(&sup.status_json(), 2)[0];
    assert!(proc::environ_of(new).contains_key("NOTIFY_SOCKET"));
    let cmdline = std::fs::read(format!("/proc/{new}/cmdline")).unwrap();
    assert!(cmdline.ends_with(b"second\0"), "{cmdline:?}");

    // And back: no notify socket for a delay-mode worker.
    sandbox.write("web.toml", &with("delay:100ms", "third"));
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let third = live_workers(&sup.status_json(), 3)[0];
    assert!(!proc::environ_of(third).contains_key("NOTIFY_SOCKET"));
}

#[test]
fn an_upgrade_after_a_reload_keeps_the_reloaded_listeners_workers_and_specs() {
    let sandbox = Sandbox::new("reconf-upgrade");
    let (sup, _) = start(&sandbox, &config(&["keep=tcp://127.0.0.1:0"], 2, ""), 2);
    let old = live_workers(&sup.status_json(), 1);
    let keep_inode = inode(old[0], 3);
    let both = ["keep=tcp://127.0.0.1:0", "added=tcp://127.0.0.1:0"];
    sandbox.write("web.toml", &config(&both, 3, ""));
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "ctl reload: {}", text(&out));
    let before = sup.status_json();
    let pids = live_workers(&before, 2);
    assert_eq!(pids.len(), 3, "workers 2 -> 3: {before}");
    let added_inode = inode(pids[0], 4);
    wait_until(DEADLINE, "generation 1 to be gone", || {
        old.iter().all(|&p| !proc::is_alive(p))
    });

    // Broken between the reload and the upgrade: the new image rebuilds the running config
    // from the hand-off, not from the file, so this neither refuses the upgrade nor kills it.
    sandbox.write("web.toml", "workers = = 3\n");
    let out = sup.ctl(&["upgrade"]);
    assert!(out.status.success(), "ctl upgrade: {}", text(&out));
    assert!(
        text(&out).contains("the config file was not applied") && text(&out).contains("line 1"),
        "the upgrade says why the file was not applied: {}",
        text(&out)
    );
    let after = sup.status_json();
    assert_eq!(after["upgrades"], 1, "{after}");
    assert_eq!(listeners(&after), listeners(&before), "the listener set");
    assert_eq!(live_workers(&after, 2), pids, "the workers' pids");
    assert_eq!(after["target_workers"], 3);
    let held = sockets_of(sup.pid());
    assert!(
        held.contains(&keep_inode),
        "the unchanged listener's socket"
    );
    assert!(held.contains(&added_inode), "the added listener's socket");

    // The next reload still knows what the running generation got, and changes only the env.
    sandbox.write("web.toml", &config(&both, 3, "env = [\"COLOR=green\"]\n"));
    let out = sup.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "ctl reload after the upgrade: {}",
        text(&out)
    );
    let status = sup.status_json();
    let new = live_workers(&status, 3);
    assert_eq!(new.len(), 3, "generation 3: {status}");
    assert_eq!(listeners(&status), listeners(&before));
    for &pid in &new {
        assert_eq!(inode(pid, 3), keep_inode, "the same kernel socket at fd 3");
        assert_eq!(inode(pid, 4), added_inode, "the same kernel socket at fd 4");
        let env = proc::environ_of(pid);
        assert_eq!(env["COLOR"], "green");
        assert_eq!(env["LISTEN_FDNAMES"], "keep:added");
    }

    // An upgrade re-reads the file like a reload, but restarts no worker: 3 -> 4 adds one.
    sandbox.write("web.toml", &config(&both, 4, "env = [\"COLOR=green\"]\n"));
    let out = sup.ctl(&["upgrade"]);
    assert!(out.status.success(), "ctl upgrade: {}", text(&out));
    wait_until(DEADLINE, "a fourth worker after the upgrade", || {
        live_workers(&sup.status_json(), 3).len() == 4
    });
    let status = sup.status_json();
    assert_eq!(status["upgrades"], 2);
    assert_eq!(status["target_workers"], 4);
    let now = live_workers(&status, 3);
    assert!(
        new.iter().all(|p| now.contains(p)),
        "{new:?} still in {now:?}"
    );
}

#[test]
fn an_upgrade_keeps_the_console_password_when_its_hash_file_is_gone() {
    let sandbox = Sandbox::new("upgrade-hash-file-gone");
    let hash_file = sandbox.write("hash", &hash_password("kept pw"));
    std::fs::set_permissions(
        &hash_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let body = config(&["tcp://127.0.0.1:0"], 1, "");
    let admin = format!(
        "admin = \"127.0.0.1:0\"\nadmin-password-hash-file = {:?}\n[commands.greet]\nrun = [\"/bin/echo\", \"hello-kept\"]\n",
        hash_file.to_string_lossy()
    );
    let (mut sup, _) = start(&sandbox, &format!("{body}{admin}"), 1);
    let (addr, fp) = console_address(&mut sup);
    let workers = live_workers(&sup.status_json(), 1);
    std::fs::remove_file(&hash_file).unwrap();

    let out = sup.ctl(&["upgrade"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = sup.status_json();
    assert_eq!(status["upgrades"], 1, "{status}");
    assert_eq!(live_workers(&status, 1), workers, "no worker restarted");
    sup.wait_for_log("the console keeps the password hash it runs with", DEADLINE);
    let out = console(&addr, &fp, "kept pw", "greet");
    assert!(text(&out).contains("hello-kept"), "{}", text(&out));
}

/// Issue 18, item 3, and its done-when: a FIFO as the config file froze the primary at a
/// reload (SIGTERM ignored), a symlink to `/dev/zero` was read until memory ran out. Each is
/// refused at once now, and `ctl status` answers meanwhile.
#[test]
fn a_fifo_or_a_device_as_the_config_refuses_the_reload_and_never_blocks_the_primary() {
    let sandbox = Sandbox::new("reconf-fifo");
    let good = config(&["tcp://127.0.0.1:0"], 1, "");
    let (sup, file) = start(&sandbox, &good, 1);
    std::fs::remove_file(&file).unwrap();
    let path = std::ffi::CString::new(file.to_str().expect("utf-8 path")).unwrap();
    // SAFETY: mkfifo(3) with a NUL-terminated path this test owns.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0, "mkfifo");
    let t = std::time::Instant::now();
    let out = sup.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not a regular file"), "{}", text(&out));
    let out = sup.ctl(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "the primary answered only after {:?}",
        t.elapsed()
    );
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &file).unwrap();
    let out = sup.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not a regular file"), "{}", text(&out));
    std::fs::remove_file(&file).unwrap();
    sandbox.write("web.toml", &good);
    let out = sup.ctl(&["reload"]);
    assert!(out.status.success(), "{}", text(&out));
}
