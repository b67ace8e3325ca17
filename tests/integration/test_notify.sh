#!/usr/bin/env bash
# The systemd notify protocol through a stand-in NOTIFY_SOCKET: READY and
# STATUS, watchdog cadence, RELOADING/READY on SIGHUP, pings stopping while
# the HTTP loop is wedged, STOPPING and exit 0 on SIGTERM.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

start_stub
dir=$FH_TMP/d
cfg=$(make_config "$dir")
cp "$FH_TEST_PLUGIN_DIR/wedge.so" "$dir/plugins/"
# A feature routing scenario type "wedge" to the wedge test overlay.
sed -i 's/^features:.*/features:\n  wedge:\n    description: "test overlay that blocks apply()"\n    enabled_overlays: []\n    rollout_percentage: 100\n    conditions:\n      scenario_types: ["wedge"]/' \
    "$dir/overlay_feature_flags.yaml"
printf 'overlays:\n  wedge:\n    config: { block_ms: 3000 }\n' >>"$cfg"

notes=$FH_TMP/notify.log
: >"$notes"
"$FH_TOOLS_DIR/notify-listen" "$FH_TMP/notify.sock" "$notes" &
LISTENER=$!
trap 'kill $LISTENER 2>/dev/null; cleanup_daemons' EXIT
wait_for 5 test -S "$FH_TMP/notify.sock" || { echo "no notify socket"; exit 1; }

count() { grep -c "$1" "$notes"; }
NOTIFY_SOCKET=$FH_TMP/notify.sock WATCHDOG_USEC=400000 start_daemon "$cfg"

check "READY=1 once serving" wait_for 5 grep -q 'READY=1' "$notes"
check "STATUS= with overlay counts" grep -Eq 'STATUS=.*3 overlays enabled' "$notes"
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

# Wedge the HTTP loop: pings must stop while it is stuck, then resume.
curl -s -o /dev/null --max-time 10 -H 'Content-Type: application/json' \
    --data-binary '{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"wedge"}}' \
    "$FH/v1/chat/completions" &
CURL=$!
check "the wedge overlay is running" wait_for 5 grep -q 'wedging' "$FH_TMP/daemon.log"
sleep 1.2 # past the 1 s staleness allowance: an observation window, not a wait
before=$(count WATCHDOG=1)
sleep 1.2
after=$(count WATCHDOG=1)
check "no pings while the loop is wedged ($before -> $after)" [ "$before" = "$after" ]
check "the daemon says why" grep -q 'watchdog: the HTTP or upstream loop is not responding' "$FH_TMP/daemon.log"
wait $CURL
check "pings resume once the loop runs again" wait_for 5 bash -c "[ \$(grep -c WATCHDOG=1 '$notes') -gt $after ]"

stop_daemon
check "SIGTERM: exit 0" [ $? = 0 ]
check "STOPPING=1 sent" grep -q 'STOPPING=1' "$notes"
finish
