#!/bin/bash
# Issue 18, item 2's figure: the primary's CPU over a 4 s `--ready listening` start of 4
# workers that never listen, while another user (uid 65534) has 6 000 idle processes.
# Needs root (setpriv) and room for 6 000 processes. Usage: idle_processes_cpu.sh [BINARY]
set -u
BIN=${1:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/reloadsup}
D=$(mktemp -d /tmp/idle.XXXX); chmod 755 "$D"
for _ in $(seq 1 6000); do setpriv --reuid=65534 --regid=65534 --clear-groups sleep 120 & done 2>/dev/null
sleep 2
"$BIN" -l tcp://127.0.0.1:0 --state-dir "$D/state" --name idle -n 4 --ready listening \
    --ready-timeout 4s -- /bin/sleep 60 2> "$D/log" &
P=$!
sleep 0.3
t0=$(awk '{print $14+$15}' /proc/$P/stat)
sleep 4
t1=$(awk '{print $14+$15}' /proc/$P/stat)
echo "primary CPU over 4 s: $(( (t1 - t0) * 1000 / $(getconf CLK_TCK) )) ms"
kill $P; sleep 0.5; pkill -u 65534 sleep; rm -rf "$D"
