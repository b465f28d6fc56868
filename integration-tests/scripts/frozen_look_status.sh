#!/bin/bash
# Issue 18, item 2's figure: how long `ctl status` takes while a worker freezes every look at
# its /proc (integration-tests/tests/it/frozen_epoll.py: a userfaultfd page under epoll_wait).
# Needs root (a userfaultfd for kernel faults). Usage: frozen_look_status.sh [BINARY]
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:-$ROOT/target/release/reloadsup}
D=$(mktemp -d /tmp/frz.XXXX)
cat > "$D/server" <<EOS
#!/bin/sh
if [ "\$RELOADSUP_GENERATION" = 1 ]; then exec python3 $ROOT/examples/python/server.py; fi
exec python3 $ROOT/integration-tests/tests/it/frozen_epoll.py
EOS
chmod +x "$D/server"
"$BIN" -l tcp://127.0.0.1:0 --state-dir "$D/state" --name frz -n 1 --ready listening \
    --ready-timeout 8s -- "$D/server" 2> "$D/log" &
P=$!
sleep 2
kill -HUP $P
sleep 1
for _ in 1 2 3 4 5; do
    s=$(date +%s%N); timeout 20 "$BIN" ctl --control "$D/state/control.sock" status > /dev/null
    rc=$?; e=$(date +%s%N)
    echo "ctl status rc=$rc in $(( (e - s) / 1000000 )) ms"; sleep 0.8
done
sleep 4
grep -E "did not answer|failed" "$D/log" | head -3
kill $P 2>/dev/null; sleep 1; pkill -f frozen_epoll.py; kill -9 $P 2>/dev/null; rm -rf "$D"
