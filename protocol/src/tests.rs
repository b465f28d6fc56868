//! Tests of the wire format: round trips of every type and variant, golden bytes that pin the
//! encoding, and hostile input (truncated, oversized, random and mutated bytes).
//!
//! Random input comes from a fixed-seed xorshift generator so that every run sees the same bytes
//! and a failure can be reproduced by running the test again.

use super::*;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// xorshift64: tiny, deterministic, and good enough to make garbage.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // A zero state would stay zero forever.
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Random bytes, half of the time biased towards the small values that postcard uses for
    /// variant indices, lengths and option tags, so that decoding gets past the first byte.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let small = self.next() & 1 == 0;
        (0..len)
            .map(|_| {
                let x = self.next();
                if small && x & 3 != 0 {
                    (x >> 8) as u8 % 6
                } else {
                    (x >> 8) as u8
                }
            })
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a hex literal; whitespace is ignored so that goldens can be grouped by field.
fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len().is_multiple_of(2),
        "odd number of hex digits in {text:?}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).unwrap();
            u8::from_str_radix(pair, 16).unwrap()
        })
        .collect()
}

fn frame_header(len: usize) -> [u8; HEADER_LEN] {
    (len as u32).to_le_bytes()
}

/// Checks every way a value crosses the wire: bare body, frame, and a frame fed byte by byte.
fn assert_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let body = encode(value).unwrap();
    assert_eq!(
        &decode::<T>(&body).unwrap(),
        value,
        "bare body of {value:?}"
    );

    let frame = encode_frame(value).unwrap();
    assert_eq!(frame[..HEADER_LEN], frame_header(body.len()), "{value:?}");
    assert_eq!(frame[HEADER_LEN..], body[..], "{value:?}");

    let mut whole = FrameReader::new();
    whole.push(&frame);
    assert_eq!(whole.next_frame::<T>().unwrap().as_ref(), Some(value));
    assert_eq!(whole.next_frame::<T>().unwrap(), None);
    assert_eq!(whole.pending(), 0);

    let mut trickle = FrameReader::new();
    for (i, byte) in frame.iter().enumerate() {
        trickle.push(std::slice::from_ref(byte));
        let got = trickle.next_frame::<T>().unwrap();
        if i + 1 < frame.len() {
            assert_eq!(got, None, "{value:?} yielded early after {} bytes", i + 1);
            assert_eq!(trickle.pending(), i + 1);
        } else {
            assert_eq!(got.as_ref(), Some(value), "{value:?} fed byte by byte");
        }
    }
    assert_eq!(trickle.pending(), 0);
}

/// Asserts `value` encodes to exactly `golden` and that `golden` decodes back to `value`.
fn assert_golden<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T, golden: &str) {
    let expected = unhex(golden);
    assert_eq!(
        hex(&encode(value).unwrap()),
        hex(&expected),
        "encoding of {value:?} changed: that is a protocol break"
    );
    assert_eq!(&decode::<T>(&expected).unwrap(), value);
}

/// Decodes `bytes` as `T`; whatever comes out must survive another round trip unchanged.
fn decode_must_not_panic<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
    if let Ok(value) = decode::<T>(bytes) {
        let again = encode(&value).unwrap();
        assert_eq!(decode::<T>(&again).unwrap(), value, "from {}", hex(bytes));
    }
}

/// Feeds `bytes` to a fresh reader and takes `Message` frames until it runs dry or fails.
fn frames_must_not_panic(bytes: &[u8]) {
    let mut reader = FrameReader::new();
    reader.push(bytes);
    // Every frame consumes at least a header, so this ends; the bound guards a reader that
    // yields without consuming.
    for _ in 0..=bytes.len() / HEADER_LEN {
        match reader.next_frame::<Message>() {
            Ok(Some(msg)) => assert_round_trip(&msg),
            Ok(None) | Err(_) => return,
        }
    }
    panic!(
        "reader yielded more frames than {} bytes can hold",
        bytes.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Golden bytes
//
// WIRE ENUMS ARE APPEND-ONLY. postcard writes an enum variant as its position, so reordering,
// removing or inserting a variant, or changing a field's type, silently changes what every peer
// reads. The goldens below pin the bytes; a golden that has to change means the change is a
// protocol break and PROTOCOL_VERSION must be bumped. Appending a variant fails to compile in the
// `*_index` functions: give it the next index and add a golden row for it.
// ---------------------------------------------------------------------------------------------

fn message_index(msg: &Message) -> u8 {
    match msg {
        Message::Hello { .. } => 0,
        Message::Request { .. } => 1,
        Message::Progress { .. } => 2,
        Message::Reply { .. } => 3,
    }
}

fn request_index(request: &Request) -> u8 {
    match request {
        Request::Status => 0,
        Request::Reload => 1,
        Request::Scale { .. } => 2,
        Request::Add { .. } => 3,
        Request::Remove { .. } => 4,
        Request::Revive => 5,
        Request::Restart => 6,
        Request::Stop => 7,
        Request::Upgrade { .. } => 8,
        Request::Logs(_) => 9,
        Request::StopLogs { .. } => 10,
        Request::Login { .. } => 11,
        Request::ReloadWith { .. } => 12,
    }
}

fn progress_index(progress: &Progress) -> u8 {
    match progress {
        Progress::GenerationStarted { .. } => 0,
        Progress::WorkerSpawned { .. } => 1,
        Progress::WorkerReady { .. } => 2,
        Progress::Queued => 3,
        Progress::Draining { .. } => 4,
        Progress::Text(_) => 5,
        Progress::Log { .. } => 6,
    }
}

fn reply_index(reply: &Reply) -> u8 {
    match reply {
        Reply::Status(_) => 0,
        Reply::Reload(_) => 1,
        Reply::Done(_) => 2,
        Reply::Error(_) => 3,
    }
}

fn outcome_index(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Succeeded => 0,
        Outcome::RolledBack => 1,
        Outcome::Cancelled => 2,
        Outcome::Refused => 3,
    }
}

fn worker_state_index(state: &WorkerState) -> u8 {
    match state {
        WorkerState::Starting => 0,
        WorkerState::Ready => 1,
        WorkerState::Draining => 2,
        WorkerState::Backoff => 3,
        WorkerState::Dead => 4,
        WorkerState::Stopped => 5,
    }
}

fn empty_status() -> Status {
    Status {
        pid: 1,
        name: String::new(),
        generation: 0,
        target_workers: 0,
        current_workers: 0,
        dead_workers: 0,
        listeners: vec![],
        workers: vec![],
        last_reload: None,
        version: String::new(),
        upgrades: 0,
    }
}

fn small_status() -> Status {
    Status {
        pid: 42,
        name: "w".into(),
        generation: 3,
        target_workers: 2,
        current_workers: 1,
        dead_workers: 1,
        listeners: vec![ListenerInfo {
            name: "l".into(),
            address: "a".into(),
        }],
        workers: vec![WorkerInfo {
            slot: 1,
            pid: 300,
            generation: 3,
            state: WorkerState::Ready,
            restarts: 0,
            uptime_ms: 128,
            status: String::new(),
        }],
        last_reload: Some(ReloadOutcome {
            generation: 2,
            outcome: Outcome::RolledBack,
            reason: "x".into(),
        }),
        version: "v".into(),
        upgrades: 2,
    }
}

const SMALL_STATUS: &str = "
    2a        01 77     03          02 01 01          (pid, name, generation, target, current, dead)
    01 01 6c 01 61                                    (listeners: [l @ a])
    01 01 ac02 03 01 00 8001 00                       (workers: [slot 1, pid 300, ready, 128 ms])
    01 02 01 01 78                                    (last_reload: generation 2, rolled back, x)
    01 76 02                                          (version v, upgrades 2)
";

fn small_worker_spec() -> WorkerSpec {
    WorkerSpec {
        version: 1,
        primary_pid: 100,
        generation: 2,
        slot: 0,
        argv: vec![b"a".to_vec()],
        env: vec![(b"K".to_vec(), b"V".to_vec())],
        listener_names: vec!["l".into()],
        fd_count: 1,
        notify_socket: Some(b"n".to_vec()),
        uid: None,
        gid: Some(5),
        einhorn_env: true,
        listen_env: false,
    }
}

const SMALL_WORKER_SPEC: &str = "
    01 64 02 00                                 (version, primary_pid, generation, slot)
    01 01 61     01 01 4b 01 56     01 01 6c    (argv, env, listener_names)
    01           01 01 6e                       (fd_count, notify_socket)
    00           01 05       01                 (uid, gid, einhorn_env)
    00                                          (listen_env, appended for --no-listen-env)
";

fn small_shell_spec() -> ShellSpec {
    ShellSpec {
        version: 1,
        primary_pid: 2,
        name: "s".into(),
        cert_pem: b"c".to_vec(),
        key_pem: b"k".to_vec(),
        password_hash: "h".into(),
        control_path: b"p".to_vec(),
        commands: vec![CustomCommand {
            name: "n".into(),
            run: vec!["r".into()],
            help: "?".into(),
        }],
        fd_count: 1,
    }
}

const SMALL_SHELL_SPEC: &str = "
    01 02 01 73                           (version, primary_pid, name)
    01 63 01 6b 01 68 01 70               (cert_pem, key_pem, password_hash, control_path)
    01 01 6e 01 01 72 01 3f               (commands: [n: run [r], help ?])
    01                                    (fd_count)
";

/// Strips the `(field notes)` from a golden so that only hex digits remain.
fn golden(text: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn request_goldens() -> Vec<(Request, &'static str)> {
    vec![
        (Request::Status, "00"),
        (Request::Reload, "01"),
        (Request::Scale { workers: 3 }, "02 03"),
        (Request::Add { workers: 4 }, "03 04"),
        (Request::Remove { workers: 5 }, "04 05"),
        (Request::Revive, "05"),
        (Request::Restart, "06"),
        (Request::Stop, "07"),
        (
            Request::Upgrade {
                binary: Some(b"/b".to_vec()),
            },
            "08 01 02 2f62",
        ),
        (
            Request::Logs(LogQuery {
                lines: 5,
                follow: true,
                worker: Some(2),
                generation: None,
            }),
            "09 05 01 0102 00",
        ),
        (Request::StopLogs { request: 5 }, "0a 05"),
        (Request::Login { ok: true }, "0b 01"),
        (Request::ReloadWith { canary: 1 }, "0c 01"),
    ]
}

fn progress_goldens() -> Vec<(Progress, &'static str)> {
    vec![
        (
            Progress::GenerationStarted {
                generation: 2,
                workers: 3,
            },
            "00 02 03",
        ),
        (
            Progress::WorkerSpawned {
                generation: 2,
                slot: 1,
                pid: 300,
            },
            "01 02 01 ac02",
        ),
        (
            Progress::WorkerReady {
                generation: 2,
                slot: 1,
                pid: 300,
            },
            "02 02 01 ac02",
        ),
        (Progress::Queued, "03"),
        (
            Progress::Draining {
                generation: 1,
                workers: 4,
            },
            "04 01 04",
        ),
        (Progress::Text("hi".into()), "05 02 6869"),
        (
            Progress::Log {
                skipped: 3,
                lines: vec!["a\n".into()],
            },
            "06 03 01 02 610a",
        ),
    ]
}

fn reply_goldens() -> Vec<(Reply, &'static str)> {
    vec![
        (
            Reply::Status(empty_status()),
            "00 01 00 00 00 00 00 00 00 00 00 00",
        ),
        (
            Reply::Reload(ReloadOutcome {
                generation: 4,
                outcome: Outcome::Cancelled,
                reason: "x".into(),
            }),
            "01 04 02 01 78",
        ),
        (Reply::Done("ok".into()), "02 02 6f6b"),
        (Reply::Error("no".into()), "03 02 6e6f"),
    ]
}

fn message_goldens() -> Vec<(Message, &'static str)> {
    vec![
        (Message::Hello { version: 1 }, "00 01"),
        (
            Message::Request {
                id: 7,
                request: Request::Scale { workers: 3 },
            },
            "01 07 02 03",
        ),
        (
            Message::Progress {
                id: 9,
                progress: Progress::WorkerReady {
                    generation: 2,
                    slot: 1,
                    pid: 300,
                },
            },
            "02 09 02 02 01 ac02",
        ),
        (
            Message::Reply {
                id: 200,
                reply: Reply::Done("ok".into()),
            },
            "03 c801 02 02 6f6b",
        ),
    ]
}

fn outcome_goldens() -> Vec<(Outcome, &'static str)> {
    vec![
        (Outcome::Succeeded, "00"),
        (Outcome::RolledBack, "01"),
        (Outcome::Cancelled, "02"),
        (Outcome::Refused, "03"),
    ]
}

fn setup_stage_index(stage: &SetupStage) -> u8 {
    match stage {
        SetupStage::Handoff => 0,
        SetupStage::Protocol { .. } => 1,
        SetupStage::ParentDeath => 2,
        SetupStage::Groups { .. } => 3,
        SetupStage::Group { .. } => 4,
        SetupStage::User { .. } => 5,
        SetupStage::Fds => 6,
        SetupStage::Scheduling => 7,
        SetupStage::Exec => 8,
    }
}

fn setup_stage_goldens() -> Vec<(SetupStage, &'static str)> {
    vec![
        (SetupStage::Handoff, "00"),
        (SetupStage::Protocol { ours: 1, theirs: 2 }, "01 01 02"),
        (SetupStage::ParentDeath, "02"),
        (SetupStage::Groups { gid: 300 }, "03 ac02"),
        (SetupStage::Group { gid: 5 }, "04 05"),
        (SetupStage::User { uid: 65534 }, "05 feff03"),
        (SetupStage::Fds, "06"),
        (SetupStage::Scheduling, "07"),
        (SetupStage::Exec, "08"),
    ]
}

fn worker_state_goldens() -> Vec<(WorkerState, &'static str)> {
    vec![
        (WorkerState::Starting, "00"),
        (WorkerState::Ready, "01"),
        (WorkerState::Draining, "02"),
        (WorkerState::Backoff, "03"),
        (WorkerState::Dead, "04"),
        (WorkerState::Stopped, "05"),
    ]
}

/// Checks a table of one enum's goldens: one row per variant, in variant order, each starting
/// with its index.
fn assert_variant_goldens<T: Serialize + DeserializeOwned + PartialEq + Debug>(
    rows: &[(T, &str)],
    index: fn(&T) -> u8,
) {
    for (position, (value, text)) in rows.iter().enumerate() {
        assert_eq!(
            index(value) as usize,
            position,
            "golden rows must list every variant once, in order"
        );
        assert_eq!(
            unhex(text)[0],
            index(value),
            "{value:?} must start with its index"
        );
        assert_golden(value, text);
    }
}

#[test]
fn every_variant_index_is_pinned() {
    assert_variant_goldens(&message_goldens(), message_index);
    assert_variant_goldens(&request_goldens(), request_index);
    assert_variant_goldens(&progress_goldens(), progress_index);
    assert_variant_goldens(&reply_goldens(), reply_index);
    assert_variant_goldens(&outcome_goldens(), outcome_index);
    assert_variant_goldens(&worker_state_goldens(), worker_state_index);
    assert_variant_goldens(&setup_stage_goldens(), setup_stage_index);
}

/// A canary reload is a variant appended after every older one: an older primary cannot
/// decode it rather than misreading it as another request, and `Request::Reload` stays `01`.
#[test]
fn reload_with_a_canary_is_appended() {
    assert_golden(&Request::ReloadWith { canary: 300 }, "0c ac02");
    assert_golden(&Request::Reload, "01");
}

#[test]
fn message_goldens_are_pinned() {
    assert_golden(&Message::hello(), "00 01");
    assert_golden(&Message::Hello { version: 300 }, "00 ac02");
    assert_golden(
        &Message::Request {
            id: 0,
            request: Request::Stop,
        },
        "01 00 07",
    );
    assert_golden(
        &Message::Reply {
            id: 1,
            reply: Reply::Status(small_status()),
        },
        &format!("03 01 00 {}", golden(SMALL_STATUS)),
    );
}

#[test]
fn frame_golden_is_pinned() {
    assert_eq!(
        hex(&encode_frame(&Message::hello()).unwrap()),
        "020000000001"
    );
    assert_eq!(
        hex(&encode_frame(&Message::Request {
            id: 7,
            request: Request::Scale { workers: 3 },
        })
        .unwrap()),
        "0400000001070203"
    );
}

#[test]
fn status_golden_is_pinned() {
    assert_golden(&small_status(), &golden(SMALL_STATUS));
}

#[test]
fn worker_spec_golden_is_pinned() {
    assert_golden(&small_worker_spec(), &golden(SMALL_WORKER_SPEC));
}

#[test]
fn shell_spec_golden_is_pinned() {
    assert_golden(&small_shell_spec(), &golden(SMALL_SHELL_SPEC));
}

#[test]
fn fd_batch_golden_is_pinned() {
    assert_golden(
        &FdBatch {
            index: 1,
            count: 253,
        },
        "01 fd01",
    );
}

#[test]
fn setup_failure_golden_is_pinned() {
    assert_golden(
        &SetupFailure {
            stage: SetupStage::Exec,
            errno: 2,
            detail: String::new(),
        },
        &golden("08 04 00 (stage exec, errno 2 zigzag, no detail)"),
    );
    assert_golden(
        &SetupFailure {
            stage: SetupStage::Handoff,
            errno: 0,
            detail: "x".into(),
        },
        "00 00 01 78",
    );
}

#[test]
fn leading_version_reads_a_spec_of_any_version() {
    let body = encode(&small_worker_spec()).unwrap();
    assert_eq!(leading_version(&body), Some(1));
    // Version 300 followed by bytes that are no WorkerSpec of ours.
    assert_eq!(leading_version(&unhex("ac02 ff")), Some(300));
    assert!(decode::<WorkerSpec>(&unhex("ac02 ff")).is_err());
    assert_eq!(leading_version(&[]), None);
}

#[test]
fn protocol_version_is_one() {
    // Bumping this is deliberate and goes with a note in CHANGELOG.md; this test is the tripwire.
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(HEADER_LEN, 4);
    assert_eq!(MAX_FRAME, 1 << 20);
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

fn full_status() -> Status {
    Status {
        pid: u32::MAX,
        name: "web ☃".into(),
        generation: u64::MAX,
        target_workers: 4,
        current_workers: 3,
        dead_workers: 1,
        listeners: vec![
            ListenerInfo {
                name: "http".into(),
                address: "tcp://127.0.0.1:41234".into(),
            },
            ListenerInfo {
                name: "admin".into(),
                address: "unix:/run/reloadsup/admin.sock".into(),
            },
        ],
        workers: worker_state_goldens()
            .into_iter()
            .enumerate()
            .map(|(slot, (state, _))| WorkerInfo {
                slot: slot as u32,
                pid: if state == WorkerState::Dead {
                    0
                } else {
                    1000 + slot as u32
                },
                generation: 7,
                state,
                restarts: slot as u32 * 3,
                uptime_ms: 1 << (slot * 10),
                status: format!("{} for a while", state.as_str()),
            })
            .collect(),
        last_reload: Some(ReloadOutcome {
            generation: 7,
            outcome: Outcome::Succeeded,
            reason: String::new(),
        }),
        version: "0.1.0".into(),
        upgrades: u64::MAX,
    }
}

fn full_worker_spec() -> WorkerSpec {
    WorkerSpec {
        version: PROTOCOL_VERSION,
        primary_pid: 4242,
        generation: 1 << 40,
        slot: 17,
        argv: vec![b"python3".to_vec(), b"-m".to_vec(), vec![0xff, 0, b'\n']],
        env: vec![
            (b"PORT".to_vec(), b"8080".to_vec()),
            (b"EMPTY".to_vec(), vec![]),
        ],
        listener_names: vec!["http".into(), "https".into()],
        fd_count: 2,
        notify_socket: None,
        uid: Some(0),
        gid: None,
        einhorn_env: false,
        listen_env: true,
    }
}

fn full_shell_spec() -> ShellSpec {
    ShellSpec {
        version: PROTOCOL_VERSION,
        primary_pid: 1,
        name: "web".into(),
        cert_pem: b"-----BEGIN CERTIFICATE-----\n...\n".to_vec(),
        key_pem: b"-----BEGIN PRIVATE KEY-----\n...\n".to_vec(),
        password_hash: "pbkdf2-sha256$600000$00ff$abcdef".into(),
        control_path: b"/run/reloadsup/web.sock".to_vec(),
        commands: vec![
            CustomCommand {
                name: "migrate".into(),
                run: vec!["./manage.py".into(), "migrate".into()],
                help: "run database migrations".into(),
            },
            CustomCommand {
                name: "noop".into(),
                run: vec![],
                help: String::new(),
            },
        ],
        fd_count: 1,
    }
}

/// One message per variant of every enum a message can carry, plus extreme values.
fn every_message() -> Vec<Message> {
    let mut all: Vec<Message> = message_goldens().into_iter().map(|(m, _)| m).collect();
    all.push(Message::Hello { version: u32::MAX });
    all.push(Message::hello());
    let requests = request_goldens().into_iter().map(|(request, _)| request);
    all.extend(requests.enumerate().map(|(id, request)| Message::Request {
        id: id as u32,
        request,
    }));
    all.push(Message::Request {
        id: u32::MAX,
        request: Request::Remove { workers: u32::MAX },
    });
    let progress = progress_goldens().into_iter().map(|(progress, _)| progress);
    all.extend(progress.map(|progress| Message::Progress {
        id: 1 << 20,
        progress,
    }));
    all.push(Message::Progress {
        id: 3,
        progress: Progress::Text(String::new()),
    });
    let replies = reply_goldens().into_iter().map(|(reply, _)| reply);
    all.extend(replies.map(|reply| Message::Reply { id: 5, reply }));
    for (outcome, _) in outcome_goldens() {
        all.push(Message::Reply {
            id: 6,
            reply: Reply::Reload(ReloadOutcome {
                generation: u64::MAX,
                outcome,
                reason: format!("{} because", outcome.as_str()),
            }),
        });
    }
    for status in [small_status(), full_status()] {
        all.push(Message::Reply {
            id: 8,
            reply: Reply::Status(status),
        });
    }
    all
}

#[test]
fn every_message_round_trips() {
    for msg in every_message() {
        assert_round_trip(&msg);
    }
}

#[test]
fn every_enum_variant_round_trips_on_its_own() {
    for (request, _) in request_goldens() {
        assert_round_trip(&request);
    }
    for (progress, _) in progress_goldens() {
        assert_round_trip(&progress);
    }
    for (reply, _) in reply_goldens() {
        assert_round_trip(&reply);
    }
    for (outcome, _) in outcome_goldens() {
        assert_round_trip(&outcome);
    }
    for (state, _) in worker_state_goldens() {
        assert_round_trip(&state);
    }
}

#[test]
fn hand_off_specs_round_trip() {
    assert_round_trip(&small_status());
    assert_round_trip(&full_status());
    assert_round_trip(&empty_status());
    assert_round_trip(&small_worker_spec());
    assert_round_trip(&full_worker_spec());
    assert_round_trip(&small_shell_spec());
    assert_round_trip(&full_shell_spec());
    assert_round_trip(&FdBatch { index: 0, count: 0 });
    assert_round_trip(&FdBatch {
        index: u32::MAX,
        count: 253,
    });
}

#[test]
fn several_frames_in_one_push_come_out_in_order() {
    let messages = every_message();
    let mut stream = Vec::new();
    for msg in &messages {
        stream.extend(encode_frame(msg).unwrap());
    }
    let mut reader = FrameReader::new();
    reader.push(&stream);
    for msg in &messages {
        assert_eq!(reader.next_frame::<Message>().unwrap().as_ref(), Some(msg));
    }
    assert_eq!(reader.next_frame::<Message>().unwrap(), None);
    assert_eq!(reader.pending(), 0);
}

#[test]
fn frames_split_at_arbitrary_points_come_out_in_order() {
    let messages = every_message();
    let mut stream = Vec::new();
    for msg in &messages {
        stream.extend(encode_frame(msg).unwrap());
    }
    let mut rng = XorShift::new(0x5eed_0001);
    for _ in 0..50 {
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(1 + rng.below(rest.len().min(40)));
            rest = tail;
            reader.push(chunk);
            while let Some(msg) = reader.next_frame::<Message>().unwrap() {
                got.push(msg);
            }
        }
        assert_eq!(got, messages);
        assert_eq!(reader.pending(), 0);
    }
}

#[test]
fn frame_of_exactly_max_frame_is_accepted() {
    // Reply, id 0, Done, then the text's 3-byte varint length (it is below 2^21) and the text.
    let text = "a".repeat(MAX_FRAME - 6);
    let msg = Message::Reply {
        id: 0,
        reply: Reply::Done(text),
    };
    let frame = encode_frame(&msg).unwrap();
    assert_eq!(frame.len(), HEADER_LEN + MAX_FRAME);
    let mut reader = FrameReader::new();
    reader.push(&frame);
    assert_eq!(reader.next_frame::<Message>().unwrap(), Some(msg));
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

#[test]
fn every_prefix_of_a_frame_waits_for_more() {
    fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
        let frame = encode_frame(value).unwrap();
        for cut in 0..frame.len() {
            let mut reader = FrameReader::new();
            reader.push(&frame[..cut]);
            assert_eq!(
                reader.next_frame::<T>(),
                Ok(None),
                "{cut} bytes of {value:?}"
            );
            assert_eq!(reader.pending(), cut);
            reader.push(&frame[cut..]);
            assert_eq!(reader.next_frame::<T>().unwrap().as_ref(), Some(value));
        }
    }
    for msg in every_message() {
        check(&msg);
    }
    check(&full_worker_spec());
    check(&full_shell_spec());
}

#[test]
fn every_prefix_of_a_body_is_an_error() {
    fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
        let body = encode(value).unwrap();
        for cut in 0..body.len() {
            assert!(
                decode::<T>(&body[..cut]).is_err(),
                "{cut} bytes of {value:?} decoded"
            );
        }
    }
    for msg in every_message() {
        check(&msg);
    }
    check(&full_status());
    check(&full_worker_spec());
    check(&small_worker_spec());
    check(&full_shell_spec());
    check(&FdBatch {
        index: 300,
        count: 70000,
    });
}

#[test]
fn oversized_length_prefix_is_refused_before_the_body_arrives() {
    for len in [MAX_FRAME + 1, 1 << 31, u32::MAX as usize] {
        let mut reader = FrameReader::new();
        reader.push(&frame_header(len));
        assert_eq!(
            reader.next_frame::<Message>(),
            Err(Error::FrameTooLarge { len })
        );
        // Nothing was read or reserved past the header.
        assert_eq!(reader.pending(), HEADER_LEN);
    }
    let mut reader = FrameReader::new();
    reader.push(&frame_header(MAX_FRAME));
    assert_eq!(reader.next_frame::<Message>(), Ok(None));
}

#[test]
fn oversized_values_are_refused_by_encode_and_decode() {
    let too_big = Message::Reply {
        id: 0,
        reply: Reply::Done("a".repeat(MAX_FRAME)),
    };
    let len = MAX_FRAME + 6;
    assert_eq!(encode(&too_big), Err(Error::FrameTooLarge { len }));
    assert_eq!(encode_frame(&too_big), Err(Error::FrameTooLarge { len }));
    let bytes = vec![0u8; MAX_FRAME + 1];
    assert_eq!(
        decode::<Message>(&bytes),
        Err(Error::FrameTooLarge { len: MAX_FRAME + 1 })
    );
}

#[test]
fn huge_inner_length_is_refused_without_allocating_it() {
    // argv claims u32::MAX elements, Status u32::MAX workers and a name of usize::MAX bytes;
    // none of that may be reserved up front.
    let spec = unhex("01 64 02 00 ffffffff0f 01");
    assert!(matches!(
        decode::<WorkerSpec>(&spec),
        Err(Error::Malformed(_))
    ));
    let status = unhex("2a 01 77 03 02 01 01 00 ffffffff0f 00");
    assert!(matches!(
        decode::<Status>(&status),
        Err(Error::Malformed(_))
    ));
    let name = unhex("01 ffffffffffffffffff01");
    assert!(decode::<Status>(&name).is_err());
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut body = encode(&Message::hello()).unwrap();
    body.extend([0, 0, 0]);
    assert_eq!(
        decode::<Message>(&body),
        Err(Error::Malformed("3 trailing bytes".into()))
    );

    // Inside a frame too: the length prefix and the message must agree.
    let mut frame = frame_header(body.len()).to_vec();
    frame.extend(&body);
    let mut reader = FrameReader::new();
    reader.push(&frame);
    assert!(matches!(
        reader.next_frame::<Message>(),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn empty_and_unknown_bodies_are_errors() {
    let mut reader = FrameReader::new();
    reader.push(&frame_header(0));
    assert!(matches!(
        reader.next_frame::<Message>(),
        Err(Error::Malformed(_))
    ));
    // Variant index 4 does not exist (yet); nor does Request 8 or WorkerState 6.
    assert!(decode::<Message>(&[4]).is_err());
    assert!(decode::<Message>(&unhex("01 00 08")).is_err());
    assert!(decode::<WorkerState>(&[6]).is_err());
    assert!(decode::<Outcome>(&[4]).is_err());
    // Overlong varint, bad bool, bad option tag, invalid utf-8.
    assert!(decode::<Message>(&unhex("00 ffffffffff0f")).is_err());
    let mut spec = unhex(&golden(SMALL_WORKER_SPEC));
    *spec.last_mut().unwrap() = 2;
    assert!(decode::<WorkerSpec>(&spec).is_err());
    assert!(decode::<Status>(&unhex("01 00 00 00 00 00 00 00 02")).is_err());
    assert!(decode::<Message>(&unhex("02 00 05 02 c328")).is_err());
}

/// Calls `check` on 100_000 random byte strings, mostly short, every thousandth one long.
fn for_random_bytes(check: impl Fn(&[u8])) {
    let mut rng = XorShift::new(0x5eed_0002);
    for i in 0..100_000 {
        let len = if i % 1000 == 0 {
            64 + rng.below(4096)
        } else {
            rng.below(64)
        };
        check(&rng.bytes(len));
    }
}

// The same random inputs go through four tests rather than one so that they run in parallel.

#[test]
fn random_bytes_never_panic_as_message() {
    for_random_bytes(decode_must_not_panic::<Message>);
}

#[test]
fn random_bytes_never_panic_as_worker_spec() {
    for_random_bytes(decode_must_not_panic::<WorkerSpec>);
}

#[test]
fn random_bytes_never_panic_as_setup_failure() {
    for_random_bytes(decode_must_not_panic::<SetupFailure>);
}

#[test]
fn random_bytes_never_panic_as_shell_spec_or_status() {
    for_random_bytes(|bytes| {
        decode_must_not_panic::<ShellSpec>(bytes);
        decode_must_not_panic::<Status>(bytes);
    });
}

#[test]
fn random_bytes_never_panic_in_a_frame_reader() {
    for_random_bytes(frames_must_not_panic);
}

#[test]
fn random_bodies_behind_a_plausible_header_never_panic() {
    let mut rng = XorShift::new(0x5eed_0003);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let mut stream = frame_header(len).to_vec();
        stream.extend(rng.bytes(len));
        if rng.below(2) == 0 {
            // A second frame whose header may lie about its length.
            stream.extend(frame_header(rng.below(80)));
            let len = rng.below(64);
            stream.extend(rng.bytes(len));
        }
        frames_must_not_panic(&stream);
    }
}

#[test]
fn mutated_encodings_never_panic() {
    let mut samples: Vec<Vec<u8>> = every_message().iter().map(|m| encode(m).unwrap()).collect();
    samples.push(encode(&full_worker_spec()).unwrap());
    samples.push(encode(&small_worker_spec()).unwrap());
    samples.push(encode(&full_shell_spec()).unwrap());
    samples.push(encode(&full_status()).unwrap());

    let mut rng = XorShift::new(0x5eed_0004);
    for sample in &samples {
        for _ in 0..500 {
            let mut bytes = sample.clone();
            for _ in 0..1 + rng.below(3) {
                match rng.below(4) {
                    0 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                    1 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] = rng.next() as u8;
                    }
                    2 => bytes.truncate(rng.below(bytes.len() + 1)),
                    _ => {
                        let at = rng.below(bytes.len() + 1);
                        bytes.insert(at, rng.next() as u8);
                    }
                }
            }
            decode_must_not_panic::<Message>(&bytes);
            decode_must_not_panic::<WorkerSpec>(&bytes);
            decode_must_not_panic::<ShellSpec>(&bytes);

            // The same body behind its original (now possibly wrong) length prefix.
            let mut frame = frame_header(sample.len()).to_vec();
            frame.extend(&bytes);
            frames_must_not_panic(&frame);
        }
    }
}

#[test]
fn check_hello_accepts_only_our_version() {
    assert_eq!(check_hello(&Message::hello()), Ok(()));
    for theirs in [0, PROTOCOL_VERSION + 1, u32::MAX] {
        assert_eq!(
            check_hello(&Message::Hello { version: theirs }),
            Err(Error::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs
            })
        );
    }
}

#[test]
fn check_hello_refuses_anything_but_hello() {
    for msg in every_message() {
        if !matches!(msg, Message::Hello { .. }) {
            assert_eq!(check_hello(&msg), Err(Error::Unexpected("hello")));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Error messages
// ---------------------------------------------------------------------------------------------

fn assert_lowercase(text: &str) {
    assert!(
        !text.chars().any(char::is_uppercase),
        "error message is not lowercase: {text:?}"
    );
}

#[test]
fn error_messages_are_lowercase_and_carry_their_numbers() {
    let cases: Vec<(Error, &[&str])> = vec![
        (
            Error::FrameTooLarge { len: 2_000_000 },
            &["2000000", "1048576"],
        ),
        (
            Error::Malformed("3 trailing bytes".into()),
            &["3 trailing bytes"],
        ),
        (
            Error::VersionMismatch { ours: 1, theirs: 9 },
            &["version 1", "version 9"],
        ),
        (Error::Unexpected("hello"), &["hello"]),
        (
            Error::FdCount {
                expected: 2,
                received: 5,
            },
            &["expected 2", "received 5"],
        ),
    ];
    for (error, needles) in &cases {
        // Fails to compile when a variant is added: add a case above too.
        match error {
            Error::FrameTooLarge { .. }
            | Error::Malformed(_)
            | Error::VersionMismatch { .. }
            | Error::Unexpected(_)
            | Error::FdCount { .. } => {}
        }
        let text = error.to_string();
        assert_lowercase(&text);
        for needle in *needles {
            assert!(
                text.contains(needle),
                "{text:?} does not mention {needle:?}"
            );
        }
    }
}

#[test]
fn decode_errors_are_lowercase() {
    let mut spec = unhex(&golden(SMALL_WORKER_SPEC));
    *spec.last_mut().unwrap() = 2;
    let bad: Vec<Error> = vec![
        decode::<Message>(&[]).unwrap_err(),
        decode::<Message>(&[4]).unwrap_err(),
        decode::<Message>(&unhex("00 ffffffffff0f")).unwrap_err(),
        decode::<Message>(&unhex("02 00 05 02 c328")).unwrap_err(),
        decode::<Status>(&unhex("01 00 00 00 00 00 00 00 02")).unwrap_err(),
        decode::<WorkerSpec>(&spec).unwrap_err(),
        decode::<Message>(&unhex("00 01 00")).unwrap_err(),
    ];
    for error in bad {
        assert!(matches!(error, Error::Malformed(_)), "{error:?}");
        assert_lowercase(&error.to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// The keeper's link
// ---------------------------------------------------------------------------------------------

fn keeper_message_index(msg: &KeeperMessage) -> u8 {
    match msg {
        KeeperMessage::Track { .. } => 0,
        KeeperMessage::Forget { .. } => 1,
    }
}

fn keeper_message_goldens() -> Vec<(KeeperMessage, &'static str)> {
    vec![
        (
            KeeperMessage::Track {
                pgids: vec![1, 300],
            },
            "00 02 01 ac02",
        ),
        (KeeperMessage::Forget { pgid: 300 }, "01 ac02"),
    ]
}

#[test]
fn keeper_goldens_are_pinned() {
    assert_variant_goldens(&keeper_message_goldens(), keeper_message_index);
    assert_golden(
        &KeeperSpec {
            version: 1,
            primary_pid: 100,
            cgroup: Some(b"/c".to_vec()),
        },
        "01 64 01 02 2f63",
    );
    assert_golden(
        &KeeperSpec {
            version: 1,
            primary_pid: 2,
            cgroup: None,
        },
        "01 02 00",
    );
}

#[test]
fn a_full_track_batch_stays_small() {
    let batch = KeeperMessage::Track {
        pgids: vec![u32::MAX; MAX_TRACK_BATCH],
    };
    assert_round_trip(&batch);
    // The keeper reads each message into a buffer of this size.
    assert!(encode(&batch).unwrap().len() <= 2048);
}

#[test]
fn random_bytes_never_panic_as_keeper_messages() {
    for_random_bytes(|bytes| {
        decode_must_not_panic::<KeeperSpec>(bytes);
        decode_must_not_panic::<KeeperMessage>(bytes);
    });
}

// ---------------------------------------------------------------------------------------------
// The upgrade hand-off
// ---------------------------------------------------------------------------------------------

fn small_handoff() -> upgrade::Handoff {
    use upgrade::*;
    Handoff {
        version: HANDOFF_VERSION,
        from_version: "v".into(),
        args: vec![b"a".to_vec()],
        binary: b"/b".to_vec(),
        upgrades: 1,
        waiters: vec![2],
        restarters: vec![],
        state: StateImage {
            settings: SettingsImage {
                ready: ReadyImage::Delay { ns: 5 },
                ready_timeout: 6,
                graceful_timeout: 7,
                restart: RestartImage::Always,
                stop_signal: 15,
            },
            target: 1,
            serving: 1,
            starting: Some(StartingImage {
                generation: 2,
                waiters: vec![3],
            }),
            pending: None,
            next_generation: 3,
            processes: vec![ProcessImage {
                pid: 300,
                generation: 1,
                slot: 0,
                phase: PhaseImage::Ready,
                started: 8,
                ready_at: None,
                deadline: Some(9),
                status: "s".into(),
            }],
            slots: vec![SlotImage {
                restarts: 1,
                streak: 0,
                backoff: 4,
                restart_at: None,
                down: Some(DownImage::Dead("d".into())),
                since: Some(10),
            }],
            last_reload: None,
            shutdown: None,
            first_ready: true,
        },
        listeners: vec![ListenerImage {
            name: "l".into(),
            bound: "a".into(),
            fd: 3,
        }],
        control: ControlImage {
            listener_fd: 4,
            conns: vec![ConnImage {
                id: 16,
                fd: 5,
                input: vec![1],
                output: vec![],
                greeted: true,
                inflight: 1,
                serial: 2,
                pinned: false,
            }],
            next: 17,
            serial: 2,
        },
        notify: Some(NotifyImage {
            next: 11,
            sockets: vec![NotifySocketImage {
                token: 10,
                fd: 6,
                path: b"n".to_vec(),
                pid: Some(300),
            }],
        }),
        spares: vec![LinkImage { pid: 301, fd: 7 }],
        links: vec![],
        keeper: KeeperImage {
            link_fd: Some(8),
            pid: Some(299),
            tracked: vec![300],
            cgroup: None,
            started: Some(1),
            backoff: 2,
            restart_at: None,
        },
        shell: None,
        restarting: vec![],
        refill_at: Some(12),
        config_text: Some("c".into()),
        start_text: None,
        epochs: vec![EpochImage {
            from: 1,
            argv: vec![b"w".to_vec()],
            env: vec![(b"K".to_vec(), b"V".to_vec())],
            einhorn_env: false,
            listeners: vec![("l".into(), "a".into())],
        }],
        logger: Some(LoggerImage {
            spec: LoggerSpec {
                version: 1,
                primary_pid: 2,
                sink: LogSink::Stdout,
                format: LogFormat::Json,
                rotate_size: 0,
                rotate_keep: 0,
                ring_bytes: 0,
            },
            pipes: vec![PipeImage {
                id: 1,
                generation: 1,
                slot: 0,
                pid: 300,
                stream: crate::LogStream::Stderr,
                fd: 9,
            }],
            next_id: 2,
            pid: Some(302),
            link_fd: Some(10),
            started: None,
            backoff: 3,
            restart_at: None,
        }),
        manager: Some(ManagerImage {
            socket: b"@m".to_vec(),
            watchdog_usec: Some(2),
            watchdog_at: Some(3),
            ready: true,
            status: "s".into(),
        }),
        metrics: Some(MetricsImage {
            reloads_succeeded: 1,
            reloads_rolled_back: 2,
            reloads_refused: 0,
            reloads_cancelled: 0,
            reload_buckets: vec![1, 0],
            reload_seconds_sum_ns: 3,
            reload_began: Some(4),
            worker_restarts: 5,
            logins_ok: 6,
            logins_failed: 7,
            start_time_ns: 8,
            listener_fd: Some(11),
            bound: "m".into(),
            pid: Some(303),
            link_fd: Some(12),
            started: None,
            backoff: 9,
            restart_at: None,
        }),
        pending_canary: Some(2),
    }
}

const SMALL_HANDOFF: &str = "
    06 01 76 01 01 61 02 2f62 01 01 02 00   (version 6, from v, args [a], binary /b, upgrades 1, waiters [2], restarters [])
    01 05 06 07 01 1e                       (settings: delay 5ns, timeouts 6 7, always, TERM 15 zigzag)
    01 01 01 02 01 03 00 03                 (target, serving, starting gen 2 [3], pending none, next 3)
    01 ac02 01 00 01 08 00 01 09 01 73      (processes: [pid 300 gen 1 slot 0 ready, started 8, deadline 9, s])
    01 01 00 04 00 01 01 01 64 01 0a        (slots: [restarts 1, streak 0, backoff 4, dead d, since 10])
    00 00 01                                (last_reload, shutdown, first_ready)
    01 01 6c 01 61 06                       (listeners: [l @ a, fd 3: i32 is zigzag])
    08 01 10 0a 01 01 00 01 01 02 00 11 02  (control: fd 4, [conn 16, fd 5, in [1], greeted, 1 in flight, serial 2], next 17, serial 2)
    01 0b 01 0a 0c 01 6e 01 ac02            (notify: next 11, [token 10, fd 6, n, pid 300])
    01 ad02 0e 00                           (spares: [301 fd 7], links [])
    01 10 01 ab02 01 ac02 00 01 01 02 00    (keeper: fd 8, pid 299, tracked [300], no cgroup, started 1, backoff 2)
    00 00 01 0c                             (shell, restarting, refill_at 12)
    01 01 63 00                             (version 2: config_text c, start_text none)
    01 01 01 01 77 01 01 4b 01 56 00        (epochs: [from 1, argv [w], env [K=V], no einhorn env,)
    01 01 6c 01 61                          ( listeners [l @ a]])
    01 01 02 00 01 00 00 00                 (version 3: logger: spec [1, pid 2, stdout, json, 0 0 0],)
    01 01 01 00 ac02 01 12                  ( pipes [id 1, gen 1, slot 0, pid 300, stderr, fd 9],)
    02 01 ae02 01 14 00 03 00               ( next 2, pid 302, link fd 10, started none, backoff 3, restart none)
    01 02 406d 01 02 01 03 01 01 73         (version 4: manager: socket @m, watchdog 2us, due 3, ready, status s)
    01 01 02 00 00 02 01 00 03 01 04        (version 5: metrics: reloads 1 2 0 0, buckets [1 0], sum 3, began 4,)
    05 06 07 08                             ( restarts 5, logins 6 7, start 8,)
    01 16 01 6d 01 af02 01 18 00 09 00      ( listener fd 11, bound m, pid 303, link fd 12, started none, backoff 9, restart none)
    01 02                                   (version 6: pending_canary 2)
";

/// The part of [`SMALL_HANDOFF`] that version 6 appended.
const SMALL_HANDOFF_V6_TAIL: &str = "
    01 02
";

/// The part of [`SMALL_HANDOFF`] that version 5 appended.
const SMALL_HANDOFF_V5_TAIL: &str = "
    01 01 02 00 00 02 01 00 03 01 04 05 06 07 08 01 16 01 6d 01 af02 01 18 00 09 00
";

/// The part of [`SMALL_HANDOFF`] that version 4 appended.
const SMALL_HANDOFF_V4_TAIL: &str = "
    01 02 406d 01 02 01 03 01 01 73
";

/// The part of [`SMALL_HANDOFF`] that version 3 appended.
const SMALL_HANDOFF_V3_TAIL: &str = "
    01 01 02 00 01 00 00 00 01 01 01 00 ac02 01 12 02 01 ae02 01 14 00 03 00
";

#[test]
fn handoff_golden() {
    assert_golden(&small_handoff(), &golden(SMALL_HANDOFF));
    assert_golden(&Request::Upgrade { binary: None }, "08 00");
    let bytes = encode(&small_handoff()).unwrap();
    assert_eq!(upgrade::decode_handoff(&bytes).unwrap(), small_handoff());
}

/// What a version-2 image (before the logger worker) wrote for [`small_handoff`]: a binary of
/// today upgrades from it.
#[test]
fn handoff_of_version_2_is_read_without_a_logger() {
    let v6 = unhex(&golden(SMALL_HANDOFF));
    let end = v6.len()
        - unhex(SMALL_HANDOFF_V6_TAIL).len()
        - unhex(SMALL_HANDOFF_V5_TAIL).len()
        - unhex(SMALL_HANDOFF_V4_TAIL).len()
        - unhex(SMALL_HANDOFF_V3_TAIL).len();
    let mut v2 = v6[..end].to_vec();
    v2[0] = 2;
    let mut want = small_handoff();
    want.version = 2;
    want.logger = None;
    want.manager = None;
    want.metrics = None;
    want.pending_canary = None;
    assert_eq!(upgrade::decode_handoff(&v2).unwrap(), want);
    // Version 1 (before the config and epochs) is not read: its fields are not at the end.
    v2[0] = 1;
    assert_eq!(
        upgrade::decode_handoff(&v2),
        Err(Error::VersionMismatch {
            ours: upgrade::HANDOFF_VERSION,
            theirs: 1
        })
    );
}

fn ready_image_index(ready: &upgrade::ReadyImage) -> u8 {
    use upgrade::ReadyImage;
    match ready {
        ReadyImage::Notify => 0,
        ReadyImage::Delay { .. } => 1,
        ReadyImage::Immediate => 2,
        ReadyImage::Listening => 3,
    }
}

/// The readiness mode crosses an upgrade in place; `Listening` was appended without a version
/// bump: an older image never writes it.
#[test]
fn ready_image_variants_are_pinned() {
    use upgrade::ReadyImage;
    let rows = vec![
        (ReadyImage::Notify, "00"),
        (ReadyImage::Delay { ns: 5 }, "01 05"),
        (ReadyImage::Immediate, "02"),
        (ReadyImage::Listening, "03"),
    ];
    assert_variant_goldens(&rows, ready_image_index);
    // In place in a hand-off: only the settings' first byte differs from a delay's.
    let mut h = small_handoff();
    h.state.settings.ready = ReadyImage::Listening;
    let bytes = encode(&h).unwrap();
    assert_eq!(upgrade::decode_handoff(&bytes).unwrap(), h);
}

/// What a version-3 image (before the service manager's notify socket) wrote: read as if
/// reloadsup had no `NOTIFY_SOCKET`.
#[test]
fn handoff_of_version_3_is_read_without_a_manager() {
    let v6 = unhex(&golden(SMALL_HANDOFF));
    let cut = unhex(SMALL_HANDOFF_V6_TAIL).len()
        + unhex(SMALL_HANDOFF_V5_TAIL).len()
        + unhex(SMALL_HANDOFF_V4_TAIL).len();
    let mut v3 = v6[..v6.len() - cut].to_vec();
    v3[0] = 3;
    let mut want = small_handoff();
    want.version = 3;
    want.manager = None;
    want.metrics = None;
    want.pending_canary = None;
    assert_eq!(upgrade::decode_handoff(&v3).unwrap(), want);
}

/// What a version-4 image (before the metrics) wrote: read with no metrics image, so the
/// counters start from zero.
#[test]
fn handoff_of_version_4_is_read_without_metrics() {
    let v6 = unhex(&golden(SMALL_HANDOFF));
    let cut = unhex(SMALL_HANDOFF_V6_TAIL).len() + unhex(SMALL_HANDOFF_V5_TAIL).len();
    let mut v4 = v6[..v6.len() - cut].to_vec();
    v4[0] = 4;
    let mut want = small_handoff();
    want.version = 4;
    want.metrics = None;
    want.pending_canary = None;
    assert_eq!(upgrade::decode_handoff(&v4).unwrap(), want);
}

/// What a version-5 image (before the queued reload's canary count) wrote: read with none, so
/// a reload queued behind the starting one takes the config's `canary`, as it did then.
#[test]
fn handoff_of_version_5_is_read_without_a_pending_canary() {
    let v6 = unhex(&golden(SMALL_HANDOFF));
    let mut v5 = v6[..v6.len() - unhex(SMALL_HANDOFF_V6_TAIL).len()].to_vec();
    v5[0] = 5;
    let mut want = small_handoff();
    want.version = 5;
    want.pending_canary = None;
    assert_eq!(upgrade::decode_handoff(&v5).unwrap(), want);
    // `None` is the byte an older hand-off is padded with; `Some(0)` (a queued
    // `reload --canary 0`) is not that byte, and stays `Some(0)`.
    let mut h = small_handoff();
    h.pending_canary = Some(0);
    let bytes = encode(&h).unwrap();
    assert!(bytes.ends_with(&[0x01, 0x00]));
    assert_eq!(upgrade::decode_handoff(&bytes).unwrap(), h);
}

#[test]
fn metrics_messages_are_pinned() {
    assert_golden(&MetricsMessage::Ask, "00");
    let figures = Figures {
        reloads_succeeded: 1,
        reload_buckets: vec![0, 1],
        generation: 2,
        ready: 3,
        start_time_ns: 4,
        ..Figures::default()
    };
    assert_golden(
        &MetricsMessage::Figures(figures),
        "01 01 00 00 00 02 00 01 00 02 00 00 03 00 00 00 00 00 00 00 00 04",
    );
    assert_golden(
        &MetricsSpec {
            version: 1,
            primary_pid: 2,
            name: "n".into(),
        },
        "01 02 01 6e",
    );
    // Garbage never panics.
    for cut in 0..8 {
        let _ = decode::<MetricsMessage>(&[1, 0xff, 0xff, 0xff][..cut.min(4)]);
    }
}

#[test]
fn handoff_of_another_version_is_refused_by_name() {
    let mut h = small_handoff();
    h.version = upgrade::HANDOFF_VERSION + 1;
    let bytes = encode(&h).unwrap();
    assert_eq!(
        upgrade::decode_handoff(&bytes),
        Err(Error::VersionMismatch {
            ours: upgrade::HANDOFF_VERSION,
            theirs: upgrade::HANDOFF_VERSION + 1
        })
    );
}

#[test]
fn handoff_garbage_never_panics() {
    let bytes = encode(&small_handoff()).unwrap();
    for cut in 0..bytes.len() {
        assert!(upgrade::decode_handoff(&bytes[..cut]).is_err());
    }
    let mut rng = XorShift::new(8);
    for _ in 0..2000 {
        let mut b = bytes.clone();
        let i = rng.below(b.len());
        b[i] = rng.next() as u8;
        let _ = upgrade::decode_handoff(&b);
        let len = rng.below(200);
        let _ = upgrade::decode_handoff(&rng.bytes(len));
    }
}

// ---------------------------------------------------------------------------------------------
// The logger's link
// ---------------------------------------------------------------------------------------------

fn logger_message_index(msg: &LoggerMessage) -> u8 {
    match msg {
        LoggerMessage::Pipe { .. } => 0,
        LoggerMessage::Reopen => 1,
        LoggerMessage::Tail { .. } => 2,
        LoggerMessage::Untail { .. } => 3,
    }
}

fn logger_message_goldens() -> Vec<(LoggerMessage, &'static str)> {
    vec![
        (
            LoggerMessage::Pipe {
                id: 300,
                generation: 2,
                slot: 1,
                pid: 1000,
                stream: LogStream::Stderr,
            },
            "00 ac02 02 01 e807 01",
        ),
        (LoggerMessage::Reopen, "01"),
        (
            LoggerMessage::Tail {
                tail: 4,
                query: LogQuery {
                    lines: 300,
                    follow: false,
                    worker: None,
                    generation: Some(3),
                },
            },
            "02 04 ac02 00 00 0103",
        ),
        (LoggerMessage::Untail { tail: 4 }, "03 04"),
    ]
}

fn logger_event_index(msg: &LoggerEvent) -> u8 {
    match msg {
        LoggerEvent::Drained { .. } => 0,
        LoggerEvent::Lines { .. } => 1,
        LoggerEvent::TailEnd { .. } => 2,
    }
}

fn logger_event_goldens() -> Vec<(LoggerEvent, &'static str)> {
    vec![
        (LoggerEvent::Drained { id: 7 }, "00 07"),
        (
            LoggerEvent::Lines {
                tail: 1,
                skipped: 0,
                lines: vec!["x\n".into(), String::new()],
            },
            "01 01 00 02 02 780a 00",
        ),
        (LoggerEvent::TailEnd { tail: 1 }, "02 01"),
    ]
}

#[test]
fn logger_goldens_are_pinned() {
    assert_variant_goldens(&logger_message_goldens(), logger_message_index);
    assert_variant_goldens(&logger_event_goldens(), logger_event_index);
    assert_golden(&LogStream::Stdout, "00");
    assert_golden(&LogFormat::Json, "01");
    assert_golden(
        &LoggerSpec {
            version: 1,
            primary_pid: 100,
            sink: LogSink::File(b"/l".to_vec()),
            format: LogFormat::Text,
            rotate_size: 300,
            rotate_keep: 5,
            ring_bytes: 1,
        },
        "01 64 01 02 2f6c 00 ac02 05 01",
    );
    assert_golden(
        &LoggerSpec {
            version: 1,
            primary_pid: 2,
            sink: LogSink::Stdout,
            format: LogFormat::Json,
            rotate_size: 0,
            rotate_keep: 0,
            ring_bytes: 0,
        },
        "01 02 00 01 00 00 00",
    );
}

#[test]
fn random_bytes_never_panic_as_logger_messages() {
    let mut x: u32 = 0x1234_5678;
    for _ in 0..2000 {
        let mut bytes = vec![0u8; (x % 24) as usize];
        for b in &mut bytes {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        let _ = decode::<LoggerMessage>(&bytes);
        let _ = decode::<LoggerEvent>(&bytes);
        let _ = decode::<LoggerSpec>(&bytes);
    }
}
