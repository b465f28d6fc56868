//! The chaos run (issue 12, item 16): a seeded, bounded storm of reloads, bad releases, worker
//! and shell-worker SIGKILLs, garbage on the control socket and the console, and `ctl` clients
//! that never read, all while a load runs; then the checks that must hold afterwards.
//!
//! What must hold (see [`ChaosReport::violations`]):
//! - no request fails, except one whose connection was accepted by a worker this run SIGKILLed;
//! - every `ctl reload` (and `ctl upgrade`) returns 0, or 1 with a reason, and none
//!   hangs; a bad release is always reported as failed;
//! - once settled: no zombie child of the primary, its fd count as at the start, its RSS within
//!   [`RSS_TOLERANCE_KB`] / [`RSS_TOLERANCE_PERCENT`] of the start, every slot ready, and the
//!   service and the console still answer.
//!
//! **Attribution by pid.** Before a worker is SIGKILLed it is frozen with SIGSTOP; once every
//! thread of it is stopped (it can accept nothing more), the remote ports of its TCP sockets are
//! read from `/proc/PID/fd` and `/proc/PID/net/tcp{,6}`, and only then is it killed. Each client
//! records its local port once connected. A failed request is excused only if its port was held
//! by a killed worker at that moment and the request was in flight across the kill: no time
//! window is guessed. A failure before the connection was up (refused, connect timeout) is never
//! excused: the listener belongs to the primary and is never closed.
//!
//! Only this run's own processes are signalled: the primary it started, and pids the primary
//! reports as its children (checked again with the parent pid just before the signal).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reloadsup_protocol::{encode_frame, Message, Request};
use serde_json::Value;

use crate::load::{request_traced, FailureKind, REQUEST_TIMEOUT};
use crate::{bins, proc, Run, Sandbox, Supervisor, DEADLINE};

/// RSS may end this many kB above where it began. The primary's allocator keeps the high-water
/// mark of the busiest moment (a burst of control connections with full buffers, a reload's
/// progress frames to several requesters) instead of returning it to the system, so a few
/// hundred kB of growth is not a leak; a leak that scales with the number of actions shows in
/// the bench's longer run, which is checked against the same tolerance.
pub const RSS_TOLERANCE_KB: u64 = 1024;
/// ... or this percentage of the starting RSS, whichever is larger.
pub const RSS_TOLERANCE_PERCENT: u64 = 10;
/// The console password of the run (hashed with `reloadsup hash-password`).
const PASSWORD: &str = "chaos-password";
/// How long one `reloadsup ctl` or `reloadsup console` process may take before it counts as hung.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);
/// Failures kept with their details (the count goes on past this).
const MAX_FAILURES_KEPT: usize = 100_000;

/// What the run does. [`ChaosConfig::test`] is the ~20 s integration test, [`ChaosConfig::bench`]
/// the longer `make bench` section.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// How long actions are issued; settling and the end checks come on top.
    pub duration: Duration,
    /// At most this many actions, whatever the duration.
    pub max_actions: u32,
    pub workers: usize,
    pub clients: usize,
    /// `--prespawn N`; 0 leaves the flag out.
    pub prespawn: u32,
    pub seed: u64,
    /// The pause between two actions is drawn from this range (milliseconds).
    pub pause_ms: (u64, u64),
    /// `--ready-timeout`: how long a hanging release costs.
    pub ready_timeout: &'static str,
    /// Only these actions (all when empty): `CHAOS_ONLY=KillWorker,SilentCtl`, to narrow down
    /// what breaks a rule.
    pub only: Vec<Action>,
}

impl ChaosConfig {
    pub fn test(seed: u64) -> ChaosConfig {
        ChaosConfig {
            duration: Duration::from_secs(15),
            max_actions: 200,
            workers: 3,
            // Three clients keep requests in flight at every kill without starving the tests
            // that run beside this one on two cores.
            clients: 3,
            prespawn: 0,
            seed,
            pause_ms: (50, 400),
            ready_timeout: "3s",
            only: only_from_env(),
        }
    }

    pub fn bench(seed: u64, duration: Duration) -> ChaosConfig {
        ChaosConfig {
            duration,
            max_actions: 5_000,
            workers: 4,
            clients: 8,
            prespawn: 2,
            seed,
            pause_ms: (20, 300),
            ready_timeout: "3s",
            only: only_from_env(),
        }
    }
}

/// `CHAOS_SEED` if set (to replay a run), else one drawn from the clock. Panics on a malformed
/// `CHAOS_SEED`, naming it.
pub fn seed_from_env() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CHAOS_SEED {s:?}: expected an unsigned integer")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 ^ u64::from(std::process::id())),
    }
}

/// The actions named in `CHAOS_ONLY` (comma-separated, as in the report); panics on an unknown
/// name, naming it and the known ones.
pub fn only_from_env() -> Vec<Action> {
    let Ok(list) = std::env::var("CHAOS_ONLY") else {
        return Vec::new();
    };
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            ACTIONS
                .iter()
                .map(|a| a.0)
                .find(|a| format!("{a:?}").eq_ignore_ascii_case(name))
                .unwrap_or_else(|| {
                    let known: Vec<String> = ACTIONS.iter().map(|a| format!("{:?}", a.0)).collect();
                    panic!(
                        "CHAOS_ONLY: unknown action {name:?} (known: {})",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// splitmix64: tiny, seedable, good enough to pick actions (the workspace has no `rand`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One kind of chaos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// `ctl reload` of the good release.
    Reload,
    /// Two `ctl reload`s at once: the second is coalesced, both must get the outcome.
    ReloadPair,
    /// `ctl upgrade`: in-place upgrade of reloadsup itself.
    Upgrade,
    /// A release whose workers exit at once: the reload must fail and roll back.
    CrashingRelease,
    /// A release whose workers never accept nor get ready: rolled back at `--ready-timeout`.
    HangingRelease,
    /// SIGKILL to a ready worker (after recording the connections it holds).
    KillWorker,
    /// SIGKILL to the shell worker (the TLS console).
    KillShell,
    /// Random bytes, or a huge frame header, on a new control connection.
    ControlGarbage,
    /// Random bytes on a new console connection, or a wrong password through the real client.
    ConsoleGarbage,
    /// A control client that sends requests and never reads the replies, held a few seconds.
    SilentCtl,
    /// `reloadsup console -c "worker info"` with the right password, as an operator would.
    Operator,
}

/// The actions and their weights. `Upgrade` (`ctl upgrade`, in place under the same pid) is
/// checked like a reload: exit 0, or 1 with a reason.
const ACTIONS: [(Action, u64); 11] = [
    (Action::Reload, 4),
    (Action::ReloadPair, 2),
    (Action::Upgrade, 2),
    (Action::CrashingRelease, 2),
    (Action::HangingRelease, 1),
    (Action::KillWorker, 6),
    (Action::KillShell, 2),
    (Action::ControlGarbage, 3),
    (Action::ConsoleGarbage, 3),
    (Action::SilentCtl, 2),
    (Action::Operator, 2),
];

impl Action {
    /// A weighted draw among `only` (every action when empty).
    fn pick(rng: &mut Rng, only: &[Action]) -> Action {
        let allowed = |a: &Action| only.is_empty() || only.contains(a);
        let total: u64 = ACTIONS.iter().filter(|a| allowed(&a.0)).map(|a| a.1).sum();
        let mut n = rng.below(total);
        for (action, weight) in ACTIONS.into_iter().filter(|a| allowed(&a.0)) {
            if n < weight {
                return action;
            }
            n -= weight;
        }
        Action::Reload
    }
}

/// A worker this run SIGKILLed and the client ports of the connections it held.
#[derive(Debug)]
struct Kill {
    pid: u32,
    frozen_at: Instant,
    killed_at: Instant,
    ports: HashSet<u16>,
}

/// A request that did not get a correct answer.
#[derive(Debug)]
struct Failure {
    started: Instant,
    ended: Instant,
    port: Option<u16>,
    kind: FailureKind,
    message: String,
}

/// What one `ctl reload` (or upgrade) said.
#[derive(Debug)]
struct ReloadRecord {
    action: Action,
    /// `None`: it hung past [`CLIENT_DEADLINE`] or could not run.
    code: Option<i32>,
    text: String,
}

#[derive(Default)]
struct LoadShared {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<Failure>>,
}

/// The load: `clients` threads, one `GET /` per connection, each failure kept with its port.
struct ChaosLoad {
    shared: Arc<LoadShared>,
    threads: Vec<JoinHandle<()>>,
}

impl ChaosLoad {
    fn start(addr: SocketAddr, clients: usize, cap: Duration) -> ChaosLoad {
        let shared = Arc::new(LoadShared::default());
        let start = Instant::now();
        let threads = (0..clients)
            .map(|i| {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("chaos-load-{i}"))
                    .spawn(move || {
                        // Bounded by the stop flag and, as a safety net, by `cap`.
                        while !shared.stop.load(Ordering::Relaxed) && start.elapsed() < cap {
                            let started = Instant::now();
                            let mut port = None;
                            match request_traced(addr, "/", REQUEST_TIMEOUT, &mut port) {
                                Ok(_) => {
                                    shared.ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err((kind, message)) => {
                                    shared.failed.fetch_add(1, Ordering::Relaxed);
                                    let mut f = shared
                                        .failures
                                        .lock()
                                        .unwrap_or_else(PoisonError::into_inner);
                                    if f.len() < MAX_FAILURES_KEPT {
                                        f.push(Failure {
                                            started,
                                            ended: Instant::now(),
                                            port,
                                            kind,
                                            message,
                                        });
                                    }
                                }
                            }
                        }
                    })
                    .expect("spawning a chaos load thread")
            })
            .collect();
        ChaosLoad { shared, threads }
    }

    fn ok(&self) -> u64 {
        self.shared.ok.load(Ordering::Relaxed)
    }

    fn stop(mut self) -> (u64, u64, Vec<Failure>) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let failures = std::mem::take(
            &mut *self
                .shared
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        (
            self.shared.ok.load(Ordering::Relaxed),
            self.shared.failed.load(Ordering::Relaxed),
            failures,
        )
    }
}

impl Drop for ChaosLoad {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Everything a chaos run saw, and the verdicts.
pub struct ChaosReport {
    pub seed: u64,
    pub elapsed: Duration,
    /// Actions done, by kind.
    pub actions: BTreeMap<String, u32>,
    /// Actions drawn but skipped because their precondition did not hold (e.g. too few ready
    /// workers to kill one), by kind.
    pub skipped: BTreeMap<String, u32>,
    pub requests_ok: u64,
    pub requests_failed: u64,
    /// Failures on connections held by a killed worker.
    pub requests_excused: u64,
    pub kills: usize,
    /// The workers this run SIGKILLed.
    pub killed_pids: Vec<u32>,
    /// Client ports recorded across every kill.
    pub ports_at_kills: usize,
    /// `ctl reload` outcomes: (action, "0" / "1" / "hung"), count.
    pub reload_outcomes: BTreeMap<String, u32>,
    pub revives: u32,
    pub operator_ok: u32,
    pub operator_failed: u32,
    /// Why the first few operator commands failed.
    pub operator_errors: Vec<String>,
    pub fds_start: usize,
    pub fds_end: usize,
    pub rss_start_kb: u64,
    pub rss_end_kb: u64,
    pub zombies_end: Vec<u32>,
    /// What broke the rules; empty when the run holds.
    pub violations: Vec<String>,
}

impl ChaosReport {
    pub fn holds(&self) -> bool {
        self.violations.is_empty()
    }

    /// The allowed end RSS for the starting one.
    pub fn rss_limit_kb(start: u64) -> u64 {
        start + RSS_TOLERANCE_KB.max(start * RSS_TOLERANCE_PERCENT / 100)
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "chaos seed {} (CHAOS_SEED={} replays the same choices), {:.1} s",
            self.seed,
            self.seed,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(s, "actions: {:?}", self.actions);
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "skipped: {:?}", self.skipped);
        }
        let _ = writeln!(
            s,
            "requests: {} ok, {} failed, of which {} on connections of the {} killed workers ({} ports recorded)",
            self.requests_ok, self.requests_failed, self.requests_excused, self.kills, self.ports_at_kills
        );
        let _ = writeln!(s, "reload outcomes: {:?}", self.reload_outcomes);
        let _ = writeln!(
            s,
            "revives: {}; operator console: {} ok, {} failed",
            self.revives, self.operator_ok, self.operator_failed
        );
        for e in &self.operator_errors {
            let _ = writeln!(s, "  operator failure: {e}");
        }
        let _ = writeln!(
            s,
            "primary fds {} -> {}, RSS {} kB -> {} kB (limit {} kB), zombies at the end {:?}",
            self.fds_start,
            self.fds_end,
            self.rss_start_kb,
            self.rss_end_kb,
            ChaosReport::rss_limit_kb(self.rss_start_kb),
            self.zombies_end
        );
        if self.violations.is_empty() {
            let _ = writeln!(s, "verdict: holds");
        } else {
            let _ = writeln!(s, "verdict: {} violation(s):", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(s, "  - {v}");
            }
        }
        s
    }
}

/// The console's address and certificate fingerprint, from the primary's log.
struct Console {
    addr: String,
    fingerprint: String,
}

/// The state of a run between actions.
struct Chaos<'a> {
    sandbox: &'a Sandbox,
    sup: &'a mut Supervisor,
    config: &'a ChaosConfig,
    /// Picks the actions and the pauses: the same sequence for the same seed, whatever the
    /// actions find.
    rng: Rng,
    /// The choices inside one action, re-seeded from the seed and the action's index, so that a
    /// skipped action does not shift the choices of the ones after it.
    arng: Rng,
    hello: PathBuf,
    console: Console,
    kills: Vec<Kill>,
    reloads: Vec<ReloadRecord>,
    silent: Vec<(UnixStream, Instant)>,
    actions: BTreeMap<String, u32>,
    skipped: BTreeMap<String, u32>,
    revives: u32,
    operator_ok: u32,
    operator_failed: u32,
    operator_errors: Vec<String>,
    violations: Vec<String>,
}

/// Runs the whole chaos run in `sandbox` and returns its report; never panics on a broken rule
/// (that goes into [`ChaosReport::violations`]), only when the run itself cannot start.
pub fn run(sandbox: &Sandbox, config: &ChaosConfig) -> ChaosReport {
    let started = Instant::now();
    eprintln!(
        "chaos seed {} (set CHAOS_SEED={} to replay)",
        config.seed, config.seed
    );
    let hello = bins::example("hello");
    let script = sandbox.join("release");
    write_release(sandbox, &hello, Release::Good);
    let hash = hash_password();
    let mut run = Run::new([&script])
        .args(["-n", &config.workers.to_string(), "--ready", "notify"])
        .args(["--ready-timeout", config.ready_timeout])
        .args(["--graceful-timeout", "10s"])
        .args(["--admin", "127.0.0.1:0", "--admin-password-hash", &hash]);
    if config.prespawn > 0 {
        run = run.args(["--prespawn", &config.prespawn.to_string()]);
    }
    let mut sup = run.start(sandbox);
    let addr = sup.addr();
    let console = console_of(&mut sup);
    sup.wait_ready(1, config.workers);
    sup.wait_for_log("shell worker listening on", DEADLINE);

    let mut chaos = Chaos {
        sandbox,
        sup: &mut sup,
        config,
        rng: Rng(config.seed),
        arng: Rng(config.seed),
        hello,
        console,
        kills: Vec::new(),
        reloads: Vec::new(),
        silent: Vec::new(),
        actions: BTreeMap::new(),
        skipped: BTreeMap::new(),
        revives: 0,
        operator_ok: 0,
        operator_failed: 0,
        operator_errors: Vec::new(),
        violations: Vec::new(),
    };

    // Warm up every path once (a reload, the console, a control request) so that the baseline
    // fds and RSS include what the first use of each allocates for good.
    chaos.reload(Action::Reload);
    chaos.operator();
    chaos.settle();
    let (fds_start, rss_start_kb) = chaos.resources();
    chaos.reloads.clear();
    chaos.operator_ok = 0;

    let load = ChaosLoad::start(addr, config.clients, config.duration * 4 + DEADLINE * 6);
    let first_answers = wait_until_ok(Duration::from_secs(30), || load.ok() >= 10);
    if !first_answers {
        chaos
            .violations
            .push("the load got no answers before the chaos started".to_owned());
    }

    let chaos_start = Instant::now();
    let mut done = 0;
    while chaos_start.elapsed() < config.duration && done < config.max_actions {
        let action = Action::pick(&mut chaos.rng, &config.only);
        chaos.arng = Rng(config.seed ^ u64::from(done + 1).wrapping_mul(0xa076_1d64_78bd_642f));
        if chaos.act(action) {
            *chaos.actions.entry(format!("{action:?}")).or_default() += 1;
        } else {
            *chaos.skipped.entry(format!("{action:?}")).or_default() += 1;
        }
        done += 1;
        chaos.release_silent(false);
        chaos.revive_dead();
        // Pacing between actions, not a wait for an event: the load runs meanwhile.
        let pause = chaos.rng.between(config.pause_ms.0, config.pause_ms.1);
        thread::sleep(Duration::from_millis(pause));
    }
    chaos.release_silent(true);
    chaos.settle();

    let ok_before_check = load.ok();
    let more = wait_until_ok(Duration::from_secs(30), || load.ok() > ok_before_check + 10);
    if !more {
        chaos
            .violations
            .push("the load got no more answers after the chaos".to_owned());
    }
    let (requests_ok, requests_failed, failures) = load.stop();
    if let Err(e) = crate::get(addr, "/") {
        chaos
            .violations
            .push(format!("the service does not answer after the chaos: {e}"));
    }

    // Attribution.
    let mut excused = 0;
    let mut unexcused: Vec<&Failure> = Vec::new();
    for f in &failures {
        let held = f.port.is_some_and(|port| {
            chaos.kills.iter().any(|k| {
                k.ports.contains(&port) && f.started <= k.killed_at && f.ended >= k.frozen_at
            })
        });
        if held {
            excused += 1;
        } else {
            unexcused.push(f);
        }
    }
    let unkept = requests_failed.saturating_sub(failures.len() as u64);
    if !unexcused.is_empty() || unkept > 0 {
        let mut by_kind: BTreeMap<String, u32> = BTreeMap::new();
        for f in &unexcused {
            *by_kind.entry(f.kind.to_string()).or_default() += 1;
        }
        let examples: Vec<String> = unexcused
            .iter()
            .take(5)
            .map(|f| {
                format!(
                    "{} at {:?} (port {:?}): {}",
                    f.kind,
                    f.started.saturating_duration_since(chaos_start),
                    f.port,
                    f.message
                )
            })
            .collect();
        chaos.violations.push(format!(
            "{} request(s) failed on connections no killed worker held ({} more not kept): {by_kind:?}; e.g. {examples:#?}",
            unexcused.len(),
            unkept
        ));
    }

    // Reload outcomes.
    let mut reload_outcomes: BTreeMap<String, u32> = BTreeMap::new();
    for r in &chaos.reloads {
        let outcome = match r.code {
            Some(c) => c.to_string(),
            None => "hung".to_owned(),
        };
        *reload_outcomes
            .entry(format!("{:?} exit {outcome}", r.action))
            .or_default() += 1;
        let bad_release = matches!(r.action, Action::CrashingRelease | Action::HangingRelease);
        match r.code {
            Some(0) if bad_release => chaos.violations.push(format!(
                "a {:?} reported success: {}",
                r.action,
                r.text.trim()
            )),
            Some(0) => {}
            Some(1) if r.text.contains(": ") => {}
            Some(code) => chaos.violations.push(format!(
                "a {:?} exited {code} without a reason: {:?}",
                r.action,
                r.text.trim()
            )),
            None => chaos.violations.push(format!(
                "a {:?} did not report: {}",
                r.action,
                r.text.trim()
            )),
        }
    }

    // No zombie, fds and RSS back where they began, console still answers.
    let primary = chaos.sup.pid();
    let zombies = |p: u32| -> Vec<u32> {
        proc::task_children(p)
            .into_iter()
            .filter(|&c| proc::is_zombie(c))
            .collect()
    };
    wait_until_ok(Duration::from_secs(10), || zombies(primary).is_empty());
    let zombies_end = zombies(primary);
    if !zombies_end.is_empty() {
        chaos
            .violations
            .push(format!("zombie children of the primary: {zombies_end:?}"));
    }
    let fds_now = || proc::fds_of(primary).len();
    wait_until_ok(Duration::from_secs(20), || fds_now() == fds_start);
    let (fds_end, rss_end_kb) = chaos.resources();
    if fds_end != fds_start {
        chaos.violations.push(format!(
            "the primary has {fds_end} fds after the chaos, {fds_start} before: {:?}",
            describe_fds(primary)
        ));
    }
    if rss_end_kb > ChaosReport::rss_limit_kb(rss_start_kb) {
        chaos.violations.push(format!(
            "the primary's RSS grew from {rss_start_kb} kB to {rss_end_kb} kB (limit {} kB)",
            ChaosReport::rss_limit_kb(rss_start_kb)
        ));
    }
    // The shell worker may be in its restart back-off (up to 30 s after many kills).
    let console_ok = wait_until_ok(Duration::from_secs(90), || chaos.operator_once().is_ok());
    if !console_ok {
        let why = chaos.operator_once().err().unwrap_or_default();
        chaos.violations.push(format!(
            "the console does not answer after the chaos: {why}"
        ));
    }
    if chaos.sup.has_exited() {
        chaos
            .violations
            .push("the primary exited during the chaos".to_owned());
    }
    if chaos.sup.log().contains("panicked") {
        chaos
            .violations
            .push("a reloadsup process panicked (see its log)".to_owned());
    }

    let ports_at_kills = chaos.kills.iter().map(|k| k.ports.len()).sum();
    let report = ChaosReport {
        seed: config.seed,
        elapsed: started.elapsed(),
        actions: std::mem::take(&mut chaos.actions),
        skipped: std::mem::take(&mut chaos.skipped),
        requests_ok,
        requests_failed,
        requests_excused: excused,
        kills: chaos.kills.len(),
        killed_pids: chaos.kills.iter().map(|k| k.pid).collect(),
        ports_at_kills,
        reload_outcomes,
        revives: chaos.revives,
        operator_ok: chaos.operator_ok,
        operator_failed: chaos.operator_failed,
        operator_errors: std::mem::take(&mut chaos.operator_errors),
        fds_start,
        fds_end,
        rss_start_kb,
        rss_end_kb,
        zombies_end,
        violations: std::mem::take(&mut chaos.violations),
    };
    drop(chaos);
    if !report.holds() {
        eprintln!(
            "---- chaos: reloadsup log kept in {}",
            sup.log_path().display()
        );
    }
    report
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
fn wait_until_ok(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[derive(Clone, Copy)]
enum Release {
    Good,
    Crashing,
    Hanging,
}

/// Replaces the release on disk (the command is re-resolved at every spawn).
fn write_release(sandbox: &Sandbox, hello: &Path, release: Release) {
    let args: &[&str] = match release {
        Release::Good => &[],
        Release::Crashing => &["--exit-code", "3"],
        // Holds its listener but never accepts nor gets ready.
        Release::Hanging => &["--delay", "600s"],
    };
    sandbox.exec_script("release", hello, args);
}

/// `reloadsup hash-password` of [`PASSWORD`].
fn hash_password() -> String {
    let mut child = Command::new(bins::reloadsup())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run reloadsup hash-password");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{PASSWORD}");
    }
    let out = child.wait_with_output().expect("reloadsup hash-password");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && hash.contains('$'),
        "reloadsup hash-password failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    hash
}

/// The console's address and fingerprint from `admin console on ADDR (TLS certificate SHA-256
/// fingerprint FP)`.
fn console_of(sup: &mut Supervisor) -> Console {
    let needle = "admin console on ";
    let line = sup.wait_for_log(needle, DEADLINE);
    let rest = &line[line.find(needle).map_or(0, |i| i + needle.len())..];
    let addr = rest
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let fingerprint = rest
        .rsplit("fingerprint ")
        .next()
        .unwrap_or_default()
        .trim_end_matches(|c: char| c == ')' || c.is_whitespace())
        .to_owned();
    Console { addr, fingerprint }
}

/// The remote ports of the TCP sockets `pid` holds, read while it is stopped.
fn held_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = proc::fds_of(pid)
        .into_iter()
        .filter_map(|(_, target)| {
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut ports = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(inode)) = (fields.get(2), fields.get(9)) else {
                continue;
            };
            if !inodes.contains(*inode) {
                continue;
            }
            let port = remote
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if let Some(port) = port.filter(|&p| p != 0) {
                ports.insert(port);
            }
        }
    }
    ports
}

/// The fds of `pid`, each Unix socket with its `/proc/net/unix` line (path, state), to tell a
/// leaked control connection from a link.
fn describe_fds(pid: u32) -> Vec<String> {
    let unix = fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    proc::fds_of(pid)
        .into_iter()
        .map(|(fd, target)| {
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'));
            let line = inode.and_then(|i| {
                unix.lines()
                    .find(|l| l.split_whitespace().nth(6) == Some(i))
                    .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
            });
            match line {
                Some(l) => format!("{fd}: {target} unix {l}"),
                None => format!("{fd}: {target}"),
            }
        })
        .collect()
}

/// The live children of `pid` running the hidden `role` of reloadsup (`__shell`, `__worker`).
fn role_children(pid: u32, role: &[u8]) -> Vec<u32> {
    proc::task_children(pid)
        .into_iter()
        .filter(|&p| {
            fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(role))
                && !proc::is_zombie(p)
        })
        .collect()
}

/// Whether every thread of `pid` is stopped (or it is gone).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.filter_map(Result::ok).all(|t| {
        let tid: u32 = t
            .file_name()
            .to_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().next()?.chars().next()
            })
            .is_none_or(|c| matches!(c, 'T' | 't' | 'Z' | 'X'))
    })
}

impl Chaos<'_> {
    /// Does `action`; returns false when it was skipped.
    fn act(&mut self, action: Action) -> bool {
        match action {
            Action::Reload | Action::Upgrade => self.reload(action),
            Action::ReloadPair => self.reload_pair(),
            Action::CrashingRelease => self.bad_release(Release::Crashing, action),
            Action::HangingRelease => self.bad_release(Release::Hanging, action),
            Action::KillWorker => self.kill_worker(),
            Action::KillShell => self.kill_shell(),
            Action::ControlGarbage => self.control_garbage(),
            Action::ConsoleGarbage => self.console_garbage(),
            Action::SilentCtl => self.silent_ctl(),
            Action::Operator => {
                self.operator();
                true
            }
        }
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bins::reloadsup());
        cmd.arg("ctl")
            .arg("--control")
            .arg(self.sup.control_path())
            .args(args);
        cmd
    }

    fn status(&self) -> Option<Value> {
        let out = crate::try_output_with_timeout(
            &mut self.ctl_command(&["status", "--json"]),
            CLIENT_DEADLINE,
        )
        .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Pids of the ready workers.
    fn ready_workers(status: &Value) -> Vec<u32> {
        status["workers"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter(|w| w["state"] == "ready")
                    .filter_map(|w| w["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every slot ready, nothing starting or draining, no dead slot.
    fn is_settled(&self, status: &Value) -> bool {
        let n = self.config.workers as u64;
        status["target_workers"] == n
            && status["current_workers"] == n
            && status["dead_workers"] == 0
            && status["workers"].as_array().is_some_and(|w| {
                w.len() == self.config.workers && w.iter().all(|w| w["state"] == "ready")
            })
    }

    /// Waits until the supervisor is settled (reviving dead slots on the way).
    fn settle(&mut self) {
        // A slot killed many times may be in its restart back-off (up to 30 s).
        let settled = wait_until_ok(Duration::from_secs(90), || {
            self.revive_dead();
            self.status().is_some_and(|s| self.is_settled(&s))
                && self.spares() == self.config.prespawn as usize
        });
        if !settled {
            let last = self.status().unwrap_or(Value::Null);
            self.violations
                .push(format!("the supervisor did not settle within 90 s: {last}"));
        }
    }

    /// The primary's children still in the worker role (not exec'd into the command): the
    /// `--prespawn` spares, which are topped up a moment after a reload took some.
    fn spares(&self) -> usize {
        role_children(self.sup.pid(), b"__worker").len()
    }

    fn revive_dead(&mut self) {
        let dead = self
            .status()
            .and_then(|s| s["dead_workers"].as_u64())
            .unwrap_or(0);
        if dead > 0 {
            let _ =
                crate::try_output_with_timeout(&mut self.ctl_command(&["revive"]), CLIENT_DEADLINE);
            self.revives += 1;
        }
    }

    /// The primary's open fd count and RSS, read with no control client of ours connected.
    fn resources(&self) -> (usize, u64) {
        let pid = self.sup.pid();
        (
            proc::fds_of(pid).len(),
            proc::status_kb(pid, "VmRSS").unwrap_or(0),
        )
    }

    fn record_reload(&mut self, action: Action, result: Result<Output, String>) {
        let record = match result {
            Ok(out) => ReloadRecord {
                action,
                code: out.status.code(),
                text: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            },
            Err(e) => ReloadRecord {
                action,
                code: None,
                text: e,
            },
        };
        self.reloads.push(record);
    }

    fn reload(&mut self, action: Action) -> bool {
        let verb = if action == Action::Upgrade {
            "upgrade"
        } else {
            "reload"
        };
        let result =
            crate::try_output_with_timeout(&mut self.ctl_command(&[verb]), CLIENT_DEADLINE);
        self.record_reload(action, result);
        true
    }

    fn reload_pair(&mut self) -> bool {
        let spawn = |cmd: Command| {
            thread::spawn(move || {
                let mut cmd = cmd;
                crate::try_output_with_timeout(&mut cmd, CLIENT_DEADLINE)
            })
        };
        let a = spawn(self.ctl_command(&["reload"]));
        let b = spawn(self.ctl_command(&["reload"]));
        for t in [a, b] {
            let result = t
                .join()
                .unwrap_or_else(|_| Err("the ctl thread panicked".to_owned()));
            self.record_reload(Action::ReloadPair, result);
        }
        true
    }

    /// Puts a bad release on disk, reloads (it must fail and roll back), puts the good one back.
    /// Only from a settled state, so no restart of a killed worker picks up the bad release.
    fn bad_release(&mut self, release: Release, action: Action) -> bool {
        if !self.status().is_some_and(|s| self.is_settled(&s)) {
            return false;
        }
        write_release(self.sandbox, &self.hello, release);
        let result =
            crate::try_output_with_timeout(&mut self.ctl_command(&["reload"]), CLIENT_DEADLINE);
        write_release(self.sandbox, &self.hello, Release::Good);
        self.record_reload(action, result);
        true
    }

    /// Freezes a ready worker, records the client ports of the connections it holds, and
    /// SIGKILLs it. Skipped unless at least two workers are ready, so one keeps serving.
    fn kill_worker(&mut self) -> bool {
        let Some(status) = self.status() else {
            return false;
        };
        let ready = Chaos::ready_workers(&status);
        if ready.len() < 2 {
            return false;
        }
        let pid = ready[self.arng.below(ready.len() as u64) as usize];
        let primary = self.sup.pid();
        // The pid came from the primary a moment ago; check it is still its child (not reaped
        // and reused) right before each signal.
        if proc::ppid_of(pid) != Some(primary) || proc::kill(pid, libc::SIGSTOP).is_err() {
            return false;
        }
        let frozen = wait_until_ok(DEADLINE, || all_threads_stopped(pid));
        let frozen_at = Instant::now();
        let ports = held_ports(pid);
        if !frozen || proc::ppid_of(pid) != Some(primary) {
            let _ = proc::kill(pid, libc::SIGCONT);
            return false;
        }
        let killed_at = Instant::now();
        if proc::kill(pid, libc::SIGKILL).is_err() {
            return false;
        }
        self.kills.push(Kill {
            pid,
            frozen_at,
            killed_at,
            ports,
        });
        true
    }

    fn kill_shell(&mut self) -> bool {
        let primary = self.sup.pid();
        match role_children(primary, b"__shell").first().copied() {
            Some(pid) if proc::ppid_of(pid) == Some(primary) => {
                proc::kill(pid, libc::SIGKILL).is_ok()
            }
            _ => false,
        }
    }

    fn control_garbage(&mut self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.sup.control_path()) else {
            self.violations
                .push("the control socket refused a connection".to_owned());
            return false;
        };
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let kind = self.arng.below(3);
        let bytes = match kind {
            // A frame header announcing 4 GiB.
            0 => {
                let mut b = vec![0xff, 0xff, 0xff, 0xff];
                b.extend(self.arng.bytes(64));
                b
            }
            // A proper hello, then noise.
            1 => {
                let mut b = encode_frame(&Message::hello()).unwrap_or_default();
                let n = self.arng.between(1, 4096) as usize;
                b.extend(self.arng.bytes(n));
                b
            }
            _ => {
                let n = self.arng.between(1, 4096) as usize;
                self.arng.bytes(n)
            }
        };
        let _ = s.write_all(&bytes);
        if kind == 0 {
            // No frame can be that large: the primary must close this connection (after its
            // own hello), whatever else it is doing.
            let _ = s.set_read_timeout(Some(DEADLINE));
            let mut sink = Vec::new();
            if let Err(e) = s.read_to_end(&mut sink) {
                if e.kind() != io::ErrorKind::ConnectionReset {
                    self.violations.push(format!(
                        "the primary kept a control connection that announced a 4 GiB frame: {e}"
                    ));
                }
            }
        }
        true
    }

    fn console_garbage(&mut self) -> bool {
        let kind = self.arng.below(4);
        if kind == 1 {
            // Inside TLS, after the password: a junk command line (no NUL, no newline), an
            // unbalanced quote, or a line past the 4 KiB limit (the shell ends that session).
            // `console -c` stops at the first failing command, so one junk line a session. Not
            // judged while the shell worker may be restarting, but it must not hang.
            // Printable ASCII, quotes and `#` included; the prefix keeps it from looking like
            // a flag of the client.
            let junk = |rng: &mut Rng, n: usize| -> String {
                let tail: String = rng
                    .bytes(n)
                    .into_iter()
                    .map(|b| char::from(b' ' + b % 95))
                    .collect();
                format!("junk {tail}")
            };
            let line = match self.arng.below(3) {
                0 => "worker \"unbalanced".to_owned(),
                1 => {
                    let n = self.arng.between(4100, 6000) as usize;
                    junk(&mut self.arng, n)
                }
                _ => {
                    let n = self.arng.between(1, 200) as usize;
                    junk(&mut self.arng, n)
                }
            };
            let mut cmd = Command::new(bins::reloadsup());
            cmd.args(["console", "--fingerprint", &self.console.fingerprint])
                .args(["-c", &line])
                .arg(&self.console.addr)
                .env("RELOADSUP_PASSWORD", PASSWORD);
            if let Err(e) = crate::try_output_with_timeout(&mut cmd, CLIENT_DEADLINE) {
                self.violations
                    .push(format!("a console session fed junk commands hung: {e}"));
            }
            return true;
        }
        if kind == 0 {
            // A wrong password through the real client: it must give up, not hang.
            let mut cmd = Command::new(bins::reloadsup());
            cmd.args(["console", "--fingerprint", &self.console.fingerprint])
                .args(["-c", "worker info"])
                .arg(&self.console.addr)
                .env("RELOADSUP_PASSWORD", "not-the-password");
            if let Err(e) = crate::try_output_with_timeout(&mut cmd, CLIENT_DEADLINE) {
                self.violations
                    .push(format!("a console with a wrong password hung: {e}"));
            }
            return true;
        }
        let Ok(addr) = self.console.addr.parse::<SocketAddr>() else {
            return false;
        };
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            self.violations
                .push("the console listener refused a connection".to_owned());
            return false;
        };
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let mut bytes = Vec::new();
        if self.arng.below(2) == 0 {
            // Looks like the start of a TLS record, then is not.
            bytes.extend([0x16, 0x03, 0x01, 0x40, 0x00]);
        }
        let n = self.arng.between(1, 2048) as usize;
        bytes.extend(self.arng.bytes(n));
        let _ = s.write_all(&bytes);
        true
    }

    /// A control client that sends a hello and a pile of status requests, never reads, and is
    /// held for a few seconds (or until the end of the run).
    fn silent_ctl(&mut self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.sup.control_path()) else {
            self.violations
                .push("the control socket refused a connection".to_owned());
            return false;
        };
        let mut bytes = encode_frame(&Message::hello()).unwrap_or_default();
        for id in 0..2000 {
            let frame = encode_frame(&Message::Request {
                id,
                request: Request::Status,
            });
            bytes.extend(frame.unwrap_or_default());
        }
        // Non-blocking: whatever the primary does not take stays unsent.
        let _ = s.set_nonblocking(true);
        let _ = s.write(&bytes);
        let hold = Duration::from_millis(self.arng.between(500, 4000));
        self.silent.push((s, Instant::now() + hold));
        true
    }

    fn release_silent(&mut self, all: bool) {
        let now = Instant::now();
        self.silent.retain(|(_, until)| !all && *until > now);
    }

    fn operator_once(&self) -> Result<(), String> {
        let mut cmd = Command::new(bins::reloadsup());
        cmd.args(["console", "--fingerprint", &self.console.fingerprint])
            .args(["-c", "worker info"])
            .arg(&self.console.addr)
            .env("RELOADSUP_PASSWORD", PASSWORD);
        let out = crate::try_output_with_timeout(&mut cmd, CLIENT_DEADLINE)?;
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.contains("Current Workers:") {
            Ok(())
        } else {
            Err(format!(
                "exit {}: {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// An operator's `worker info`. Counted, not judged, while the chaos goes on (the shell
    /// worker may be restarting); judged at the end.
    fn operator(&mut self) {
        match self.operator_once() {
            Ok(()) => self.operator_ok += 1,
            Err(e) => {
                self.operator_failed += 1;
                if self.operator_errors.len() < 3 {
                    self.operator_errors.push(e.trim().to_owned());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_actions() {
        let picks = |seed| {
            let mut rng = Rng(seed);
            (0..50)
                .map(|_| Action::pick(&mut rng, &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8));
        assert!(
            (1..20).any(|seed| picks(seed).contains(&Action::Upgrade)),
            "upgrade is on"
        );
    }

    #[test]
    fn rss_limit_is_the_larger_tolerance() {
        assert_eq!(ChaosReport::rss_limit_kb(4000), 4000 + RSS_TOLERANCE_KB);
        assert_eq!(ChaosReport::rss_limit_kb(100_000), 110_000);
    }
}
