# reloadsup — the two commands a user needs are `make demo` and `make test`.
CARGO ?= cargo
SHELL := /bin/bash
RELEASE_BIN := target/release

.PHONY: all build build-debug demo test unit integration bench bench-chaos lint fmt fmt-check fuzz ci clean

all: build

## Release build of the supervisor, the examples, the benchmark and the demo.
build:
	$(CARGO) build --release --workspace --bins --examples

build-debug:
	$(CARGO) build --workspace --bins --examples

## Runs `hello` under reloadsup, reloads it while a client hammers it, and prints the result.
demo: build
	$(RELEASE_BIN)/reloadsup-demo

## The whole suite: unit tests, protocol tests, and the integration tests against the real binary.
## The release build of the console example is tested too: the shipped profile must keep
## unwinding (a panicking console command must not kill the console).
test: build-debug
	$(CARGO) build --release -p reloadsup-examples --example console_commands
	@mkdir -p target
	@set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test.log; status=$$?; \
	awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f }' target/test.log; \
	exit $$status

## Figures: reload under load vs direct vs kill-and-restart, overhead, RSS, wake-ups.
bench: build
	$(RELEASE_BIN)/reloadsup-bench

## Only the chaos run (about 3 minutes; CHAOS_SEED=N replays one, CHAOS=D sets its length).
bench-chaos: build
	$(RELEASE_BIN)/reloadsup-bench --only chaos --chaos $(or $(CHAOS),150s)

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

## Coverage-guided fuzzing of frame decoding (needs a nightly toolchain and cargo-fuzz).
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz needs cargo-fuzz and a nightly toolchain: cargo install cargo-fuzz"; exit 1; }
	cd fuzz && $(CARGO) +nightly fuzz run frames -- -max_total_time=60

ci: fmt-check lint test

clean:
	$(CARGO) clean
