#!/usr/bin/env bash
# Run a command as if the machine were FACTOR times slower, to time the demo for a slow day (issue 23).
#
#   sudo benchmarks/slow_day.sh 2.5 .venv/bin/topkdice demo -w /tmp/slow_demo
#
# The command and every process it starts go into a freezer cgroup that is thawed for 1/FACTOR of each
# 100 ms and frozen for the rest, so each process gets 1/FACTOR of the wall-clock time whatever their
# number (a CPU quota would not do: it shares a budget, so one process would slow down less than two).
# Measured on the 2-core CPU: a pure-Python loop 2.35x slower at FACTOR 2.5, and the demo's epochs
# 2.49x (3.42 s against 1.37 s idle). Needs root and a cgroup freezer (v1: /sys/fs/cgroup/freezer; v2:
# cgroup.freeze). The exit status is the command's.
set -u

if [ $# -lt 2 ]; then
    echo "usage: $0 FACTOR COMMAND [ARGUMENTS...]" >&2
    exit 2
fi
FACTOR=$1
shift
if ! python3 -c "import sys; sys.exit(not float(sys.argv[1]) >= 1)" "$FACTOR" 2>/dev/null; then
    echo "$0: FACTOR must be a number >= 1, got '$FACTOR'" >&2
    exit 2
fi

if [ -d /sys/fs/cgroup/freezer ]; then
    GROUP=/sys/fs/cgroup/freezer/topkdice_slow_day_$$
    FREEZE=freezer.state FROZEN=FROZEN THAWED=THAWED
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    GROUP=/sys/fs/cgroup/topkdice_slow_day_$$
    FREEZE=cgroup.freeze FROZEN=1 THAWED=0
else
    echo "$0: no cgroup freezer on this machine" >&2
    exit 2
fi
if ! mkdir "$GROUP" 2>/dev/null; then
    echo "$0: cannot create $GROUP (run it as root)" >&2
    exit 2
fi

python3 - "$FACTOR" "$GROUP/$FREEZE" "$FROZEN" "$THAWED" <<'PY' &
import sys
import time

factor, state, frozen, thawed = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
period = 0.1
while True:
    time.sleep(period / factor)
    with open(state, "w") as f:
        f.write(frozen)
    time.sleep(period - period / factor)
    with open(state, "w") as f:
        f.write(thawed)
PY
DUTY=$!

bash -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' _ "$GROUP" "$@"
STATUS=$?

kill "$DUTY" 2>/dev/null
wait "$DUTY" 2>/dev/null
echo "$THAWED" > "$GROUP/$FREEZE"
# processes the command left behind end on their own (a forkserver ends once it sees its parent gone)
for _ in $(seq 100); do
    [ -z "$(cat "$GROUP/cgroup.procs" 2>/dev/null)" ] && break
    sleep 0.1
done
rmdir "$GROUP" 2>/dev/null || echo "$0: $GROUP still holds processes; remove it when they end" >&2
exit "$STATUS"
