#!/usr/bin/env bash
# Installs the third-party servers of README's compatibility table under DIR (default
# target/servers), for the integration tests in integration-tests/tests/it/servers.rs:
#   DIR/venv       gunicorn, uvicorn, hypercorn, daphne, uWSGI (pip, pinned in requirements.txt)
#   DIR/bin/go-server  examples/go/server.go built with `go` (Debian's golang-go when missing
#                  and root)
# Node is used as it is on PATH (examples/node/server.js needs nothing else).
#
# Idempotent: DIR/stamp holds a hash of the inputs, and a run with the same inputs does nothing.
# A server that cannot be installed is reported; under CI=true that fails the run (exit 1), and
# elsewhere the tests that need it say they are skipped.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${1:-$root/target/servers}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
ci=false
case "${CI:-}" in true | 1) ci=true ;; esac

inputs="$(cat "$here/install.sh" "$here/requirements.txt" "$root/examples/go/server.go" | sha256sum | cut -d' ' -f1)"
if [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$inputs" ]; then
    echo "make servers: up to date in $dir"
    exit 0
fi
rm -f "$dir/stamp"
failed=()

# Python servers: a venv of the python3 on PATH (its real interpreter, not a pyenv shim).
python="$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null)"
if [ -z "$python" ]; then
    failed+=("python3 (for gunicorn, uvicorn, hypercorn, daphne, uWSGI): not on PATH")
else
    venv="$dir/venv"
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        rm -rf "$venv"
        "$python" -m venv "$venv" || failed+=("python venv in $venv")
    fi
    if [ -x "$venv/bin/pip" ]; then
        echo "make servers: pip install -r examples/servers/requirements.txt (uWSGI compiles, about a minute)"
        if ! "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
            -r "$here/requirements.txt"; then
            failed+=("pip install -r examples/servers/requirements.txt")
        fi
    fi
fi

# Go: Debian's package when `go` is missing and we may install it.
if ! command -v go >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "make servers: apt-get install golang-go"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q golang-go >/dev/null ||
            { apt-get update -q >/dev/null && apt-get install -y -q golang-go >/dev/null; }
    fi
fi
if command -v go >/dev/null 2>&1; then
    mkdir -p "$dir/bin"
    if ! GOCACHE="$dir/go-cache" go build -o "$dir/bin/go-server.tmp" \
        "$root/examples/go/server.go"; then
        failed+=("go build examples/go/server.go")
    else
        mv -f "$dir/bin/go-server.tmp" "$dir/bin/go-server"
    fi
else
    failed+=("go: not on PATH (apt-get install golang-go, as root)")
fi

if [ "${#failed[@]}" -gt 0 ]; then
    for f in "${failed[@]}"; do echo "make servers: unable to install: $f" >&2; done
    if $ci; then
        echo "make servers: CI=true, so a server that cannot be installed fails the run" >&2
        exit 1
    fi
    echo "make servers: the tests that need these say they are skipped" >&2
    exit 0
fi
echo "$inputs" >"$dir/stamp"
echo "make servers: installed in $dir"
