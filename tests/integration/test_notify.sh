#!/usr/bin/env bash
# The systemd notify protocol through a stand-in NOTIFY_SOCKET: READY and
# STATUS, watchdog cadence, RELOADING/READY on SIGHUP, pings stopping while
# a worker's loop is frozen (and only then), STOPPING and exit 0 on SIGTERM.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

start_stub
dir=$FH_TMP/d
cfg=$(make_config "$dir")
printf 'workers: 2\n' >>"$cfg"

start_notify_listener
notes=$FH_TMP/notify.log

count() { grep -c "$1" "$notes"; }
NOTIFY_SOCKET=$FH_TMP/notify.sock WATCHDOG_USEC=400000 start_daemon "$cfg"

check "READY=1 once serving" wait_for 5 grep -q 'READY=1' "$notes"
check "STATUS= with overlay counts" grep -Eq 'STATUS=.*2 overlays enabled' "$notes"
check "READY only after the listener is up (the ready file exists)" test -s "$FH_TMP/ready"
check "watchdog pings keep coming" wait_for 5 bash -c "[ \$(grep -c WATCHDOG=1 '$notes') -ge 5 ]"
first=$(grep WATCHDOG=1 "$notes" | head -1 | cut -d' ' -f1)
fifth=$(grep WATCHDOG=1 "$notes" | sed -n 5p | cut -d' ' -f1)
gap=$(((fifth - first) / 4))
check "pings at about half of WATCHDOG_USEC (200 ms; measured $gap ms)" [ "$gap" -ge 150 -a "$gap" -le 400 ]

kill -HUP "$FH_PID"
check "SIGHUP: RELOADING=1" wait_for 5 grep -q 'RELOADING=1' "$notes"
reloading_line=$(grep -n 'RELOADING=1' "$notes" | head -1 | cut -d: -f1)
check "then READY=1 again" wait_for 5 bash -c "tail -n +$reloading_line '$notes' | grep -q 'READY=1'"

# Freeze one worker's loop (as a bug would): the pings must stop while it is
# stuck, whatever the other worker still does, then resume.
"$FH_TOOLS_DIR/freeze-thread" "$FH_PID" fh-worker-1 3000 &
FREEZE=$!
# From the moment the daemon notices (past its 1 s allowance), a 1 s window
# well inside the freeze: the observation window is the only fixed sleep.
wait_for 5 grep -q 'watchdog: worker 1 did not answer' "$FH_TMP/daemon.log"
before=$(count WATCHDOG=1)
sleep 1.0
after=$(count WATCHDOG=1)
wait $FREEZE
check "the worker could be frozen (freeze-thread exit $?)" [ $? = 0 ]
check "no pings while a worker loop is frozen ($before -> $after)" [ "$before" = "$after" ]
check "the daemon says which" grep -q 'watchdog: worker 1 did not answer' "$FH_TMP/daemon.log"
check "pings resume once the loop runs again" wait_for 5 bash -c "[ \$(grep -c WATCHDOG=1 '$notes') -gt $after ]"

stop_daemon
check "SIGTERM: exit 0" [ $? = 0 ]
check "STOPPING=1 sent" grep -q 'STOPPING=1' "$notes"
finish
