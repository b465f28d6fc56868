# reloadsup — the two commands a user needs are `make demo` and `make test`.
CARGO ?= cargo
SHELL := /bin/bash
RELEASE_BIN := target/release
# The fuzz targets, built on stable without sanitizers into the root's target directory (so the
# dependencies are shared); `make test` runs every target's seed corpus through them.
FUZZ_BUILD := $(CARGO) build --locked --manifest-path fuzz/Cargo.toml --target-dir target
FUZZ_TARGET ?= frames

.PHONY: all build build-debug servers demo test unit integration bench bench-chaos lint fmt fmt-check doc fuzz fuzz-build ci clean

all: build

## Release build of the supervisor, the examples, the benchmark and the demo.
build:
	$(CARGO) build --release --workspace --bins --examples

build-debug:
	$(CARGO) build --locked --workspace --bins --examples
	$(FUZZ_BUILD)

## The third-party servers of README's compatibility table (gunicorn, uvicorn, hypercorn, daphne,
## uWSGI in a pinned venv; the Go example built, with Debian's Go when missing) under
## target/servers, cached by a stamp; under CI=true one that cannot be installed fails the run.
servers:
	examples/servers/install.sh target/servers

## Runs `hello` under reloadsup, reloads it while a client hammers it, and prints the result.
demo: build
	$(RELEASE_BIN)/reloadsup-demo

## The whole suite: unit tests, protocol tests, and the integration tests against the real binary.
## The release build of the console example is tested too: the shipped profile must keep
## unwinding (a panicking console command must not kill the console).
test: build-debug servers
	$(CARGO) build --release -p reloadsup-examples --example console_commands
	@mkdir -p target
	@set -o pipefail; $(CARGO) test --locked --workspace --no-fail-fast 2>&1 | tee target/test.log; status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f }' target/test.log; \
	exit $$status

## Figures: reload under load vs direct vs kill-and-restart, overhead, RSS, wake-ups.
bench: build
	$(RELEASE_BIN)/reloadsup-bench

## Only the chaos run (about 3 minutes; CHAOS_SEED=N replays one, CHAOS=D sets its length).
bench-chaos: build
	$(RELEASE_BIN)/reloadsup-bench --only chaos --chaos $(or $(CHAOS),150s)

lint:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked --manifest-path fuzz/Cargo.toml --target-dir target --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml

fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check

## API docs of the workspace; a broken link or a bad doc comment is an error.
## Twice at most, and first in `make ci`: in 3 of about 12 clean CI runs here, cargo's probe of
## rustc for `cargo doc` failed after the lint step had built the fuzz crate's C++ into the same
## target dir (the cause is not found yet); a real doc warning fails both runs.
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --workspace --no-deps || \
	{ rm -f target/.rustc_info.json; RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --workspace --no-deps; }

## The fuzz targets as plain binaries (stable); coverage-guided fuzzing is `make fuzz`.
fuzz-build:
	$(FUZZ_BUILD)

## Coverage-guided fuzzing of one target, FUZZ_TARGET=frames by default (needs a nightly
## toolchain and cargo-fuzz); the targets are fuzz/fuzz_targets/*.rs.
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz needs cargo-fuzz and a nightly toolchain: cargo install cargo-fuzz"; exit 1; }
	cd fuzz && $(CARGO) +nightly fuzz run $(FUZZ_TARGET) -- -max_total_time=60

## What CI runs (.ci/run): formatting, lints, docs, the fuzz build, then the whole suite.
ci: fmt-check doc lint fuzz-build test

clean:
	$(CARGO) clean
