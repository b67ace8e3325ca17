#!/usr/bin/env bash
# 2,000 requests in flight at once to an upstream that answers after 1 s:
# all complete, and the daemon's thread count does not grow (no thread is
# held per waiting request).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

N=${FH_CONCURRENCY:-2000}
# Under TSan the daemon runs many times slower (and shares the cores with
# the other concurrency tests): 500 at once still exercises every hand-off
# for races; the 2,000 run in the gcc and ASan builds.
[ "${FH_SANITIZE:-}" = thread ] && N=${FH_CONCURRENCY:-500}
start_stub
# One load generator stands for many clients: lift the per-address cap.
FH_TEST_LIMITS='{ max_body_bytes: 65536, max_connections: 10000, max_connections_per_ip: 10000 }'
FH_TEST_TIMEOUT_MS=30000 # (make_config reads it: not as a prefix of start_daemon)
FH_TEST_LOG_LEVEL=warn start_daemon "$(make_config "$FH_TMP/d")"
threads_before=$(ls "/proc/$FH_PID/task" | wc -l)

echo '{"model":"m","stub":{"delay_ms":1000},"messages":[{"role":"user","content":"refund twice"}],"fusion":{"scenario_type":"refund_processing","confidence":0.9}}' >"$FH_TMP/req.json"
"$FH_TOOLS_DIR/fh-load" "$FH/v1/chat/completions" "$FH_TMP/req.json" "$N" "$N" 60 >"$FH_TMP/load.out" 2>&1 &
LOAD=$!
stub_waiting() { [ "$(curl -s "$STUB/stub/stats" | jq -r .in_flight)" -ge $((N * 9 / 10)) ]; }
check "$((N * 9 / 10))+ requests wait on the upstream at once" wait_for 30 stub_waiting
threads_during=$(ls "/proc/$FH_PID/task" | wc -l)
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$FH_PID/status")
wait $LOAD
load_rc=$?
cat "$FH_TMP/load.out"
echo "daemon threads before=$threads_before during=$threads_during; RSS during=${rss_kb} kB"
check "every request answered 2xx" [ "$load_rc" = 0 ]
check "thread count does not grow ($threads_before -> $threads_during)" [ "$threads_during" -le "$threads_before" ]
check "at most 16 threads" [ "$threads_during" -le 16 ]
elapsed=$(sed -n 's/.*elapsed_s=\([0-9]*\).*/\1/p' "$FH_TMP/load.out")
check "all done in well under N x 1 s (${elapsed}s)" [ "${elapsed:-999}" -lt 20 ]
stop_daemon
check "SIGTERM: exit 0" [ $? = 0 ]
finish
