//! A hostile peer's view of the newest mechanisms (DESIGN.md promise 7): each test plays the
//! attacker against the real binary and checks the primary holds.

use reloadsup_integration_tests::{proc, python3, require, wait_for, Run, Sandbox, DEADLINE};

use crate::start;

/// A notify-ready worker that, once the file `go` appears in the sandbox, sends 200 datagrams to
/// its NOTIFY_SOCKET each carrying 20 fds (more than the primary's control buffer holds), then
/// says `STATUS=flooded`.
const FD_FLOOD: &str = r#"
import array, os, socket, sys, time
go = os.path.join(sys.argv[1], "go")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect(os.environ["NOTIFY_SOCKET"])
s.send(b"READY=1")
for _ in range(2000):
    if os.path.exists(go):
        break
    time.sleep(0.01)
null = os.open("/dev/null", os.O_RDONLY)
fds = array.array("i", [null] * 20)
for i in range(200):
    s.sendmsg([b"STATUS=flooding"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
s.send(b"STATUS=flooded")
while True:
    time.sleep(1)
"#;

fn python_or_skip() -> Option<std::path::PathBuf> {
    let python = python3();
    require("python3 on PATH", python.is_some()).then(|| python.expect("checked by require"))
}

fn worker_status(sup: &reloadsup_integration_tests::Supervisor) -> String {
    sup.status_json()["workers"][0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Regression: a datagram with more fds than the receive buffer held came back as an error
/// (MSG_CTRUNC) before the fds that did arrive were owned, so each leaked 8 fds into the
/// primary; 200 of them were 1600 fds, a flood of them the primary's whole fd table.
#[test]
fn notify_datagrams_with_many_fds_leak_none_into_the_primary() {
    let Some(python) = python_or_skip() else {
        return;
    };
    let sb = Sandbox::new("notify_datagrams_with_many_fds_leak_none_into_the_primary");
    let script = sb.write("flood.py", FD_FLOOD);
    let run = Run::new([
        python.as_os_str(),
        script.as_os_str(),
        sb.path().as_os_str(),
    ])
    .args(["--ready", "notify", "--ready-timeout", "15s"]);
    let (sup, _) = start(&sb, run, 1);
    let before = proc::fds_of(sup.pid()).len();
    std::fs::write(sb.join("go"), "").unwrap();
    wait_for(DEADLINE, "the worker's STATUS=flooded", || {
        (worker_status(&sup) == "flooded").then_some(())
    });
    let after = proc::fds_of(sup.pid()).len();
    assert!(
        after <= before + 2,
        "the primary held {before} fds before the flood and {after} after it"
    );
    assert!(
        sup.ctl(&["status"]).status.success(),
        "ctl still answers after the flood"
    );
}
