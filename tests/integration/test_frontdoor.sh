#!/usr/bin/env bash
# The front door under hostile and unlucky clients: a table of malformed,
# smuggling and oversized inputs (door_cases.py, raw sockets), half-closed
# clients, pipelining and keep-alive, the head and body deadlines, the
# per-address cap; then clients that reset while they wait (the upstream
# call is cancelled and counted), upstream answers a gateway must not relay,
# /health while the upstream is down, and slow clients filling
# max_connections while the watchdog keeps pinging.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

start_stub
FH_TEST_LIMITS='{ max_body_bytes: 65536, max_connections: 10000, max_connections_per_ip: 16,
  header_timeout_ms: 1500, body_min_bytes_per_s: 1000 }'
# A 64 MiB answer takes more than the default 3 s under TSan.
FH_TEST_TIMEOUT_MS=30000
start_daemon "$(make_config "$FH_TMP/d")"
port=${FH##*:}

python3 "$FH_SOURCE_DIR/tests/integration/door_cases.py" 127.0.0.1 "$port" "$STUB" >"$FH_TMP/cases.out" 2>&1
cases_rc=$?
cat "$FH_TMP/cases.out"
FH_PASSED=$((FH_PASSED + $(grep -c '^ok - ' "$FH_TMP/cases.out")))
FH_FAILED=$((FH_FAILED + $(grep -c '^not ok - ' "$FH_TMP/cases.out")))
check "the table ran to its end (exit $cases_rc)" grep -q '^door_cases: ' "$FH_TMP/cases.out"

# ---- clients that reset while they wait: their upstream calls are cancelled ----
metric() { curl -s "$FH/metrics" | sed -n "s/^$1 //p"; }
in_flight_is() { test "$(curl -s "$FH/health" | jq -r .in_flight)" = "$1"; }
hung_up_is() { test "$(curl -s "$STUB/stub/stats" | jq .hung_up)" = "$1"; }
curl -s -X DELETE "$STUB/stub/stats" >/dev/null
python3 - "$port" <<'PY'
import json, socket, struct, sys, time
port = int(sys.argv[1])
socks = []
for i in range(10):
    s = socket.create_connection(("127.0.0.1", port))
    stream = i % 2 == 1
    b = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stub":
         {"delay_ms": 4000} if not stream else {"stall_after_chunks": 1}}
    if stream:
        b["stream"] = True
    body = json.dumps(b).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    socks.append((s, stream))
for s, stream in socks:
    if stream:  # wait for the stream to start: a reset mid-stream
        s.settimeout(5)
        s.recv(100)
time.sleep(0.3)  # the delayed ones are waiting upstream by now
for s, _ in socks:  # SO_LINGER 0: close() sends a reset
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
PY
check "the daemon lets go of the 10 reset requests at once (in_flight 0)" wait_for 2 in_flight_is 0
check "fusion_client_cancelled_total counts the 10 cancelled calls ($(metric fusion_client_cancelled_total))" \
    test "$(metric fusion_client_cancelled_total)" = 10
check "the upstream sees the gateway hang up on all 10, well before the 4 s delay ends" \
    wait_for 3 hung_up_is 10

# ---- upstream answers a gateway must not relay ---------------------------------------
for st in 999 600 302; do
    post /v1/chat/completions "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Order 4411 was refunded twice.\"}],\"fusion\":{\"scenario_type\":\"refund_processing_duplicate\",\"confidence\":0.9},\"stub\":{\"status\":$st}}"
    check "upstream status $st: 502 with a clear message" \
        bash -c "[ $STATUS = 502 ] && jq -e '.error.code == \"upstream_invalid\" and (.error.message | test(\"$st\")) and .error.param == null' '$FH_TMP/body' >/dev/null"
    check "upstream status $st: X-Fusion-Request-Id, and never reason applied" \
        bash -c "[ -n \"\$(grep -i '^X-Fusion-Request-Id:' '$FH_TMP/headers')\" ] && ! grep -qi '^X-Fusion-Reason: applied' '$FH_TMP/headers'"
done
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}],"stub":{"answer_kb":70000}}'
check "an answer over 64 MiB: 502 that says so" \
    bash -c "[ $STATUS = 502 ] && jq -e '.error.message | test(\"larger than 64 MiB\")' '$FH_TMP/body' >/dev/null && grep -qi '^X-Fusion-Request-Id:' '$FH_TMP/headers'"
stop_daemon

# ---- /health while the upstream refuses connections ------------------------------------
dead_port=$(cat "$FH_TMP/stub.port")
kill -TERM "$STUB_PID" && wait "$STUB_PID" 2>/dev/null
STUB_PID=
FH_TEST_LIMITS=
start_daemon "$(make_config "$FH_TMP/e" "http://127.0.0.1:$dead_port/v1")"
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
check "upstream down: 502 upstream_unreachable with X-Fusion-Request-Id" \
    bash -c "[ $STATUS = 502 ] && jq -e '.error.code == \"upstream_unreachable\"' '$FH_TMP/body' >/dev/null && grep -qi '^X-Fusion-Request-Id:' '$FH_TMP/headers'"
check "/health: degraded, reason upstream_unreachable" \
    bash -c "curl -s '$FH/health' | jq -e '.status == \"degraded\" and .reason == \"upstream_unreachable\"' >/dev/null"
"$STUB_BIN" --listen "127.0.0.1:$dead_port" --quiet >>"$FH_TMP/stub.log" 2>&1 &
STUB_PID=$!
check "/health: ok again once the upstream answers (no other traffic)" \
    wait_for 10 bash -c "curl -s '$FH/health' | jq -e '.status == \"ok\"' >/dev/null"
stop_daemon

# ---- slow clients fill max_connections: cut at the head deadline, the watchdog unmoved ----
start_notify_listener
FH_TEST_LIMITS='{ max_body_bytes: 65536, max_connections: 20, max_connections_per_ip: 100,
  header_timeout_ms: 2000 }'
cfg=$(make_config "$FH_TMP/f" "http://127.0.0.1:$dead_port/v1")
NOTIFY_SOCKET=$FH_TMP/notify.sock WATCHDOG_USEC=400000 start_daemon "$cfg"
python3 - "$port" "${FH##*:}" "$FH_TMP/notify.log" >"$FH_TMP/slow.out" 2>&1 <<'PY'
import socket, sys, threading, time
port = int(sys.argv[2])
notes = sys.argv[3]
def pings():
    return open(notes).read().count("WATCHDOG=1")
slow = []
for _ in range(20):
    slow.append(socket.create_connection(("127.0.0.1", port)))
stop = False
def trickle():
    # One byte every 200 ms on each: a head that never ends.
    head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 1000
    for b in head:
        if stop:
            return
        for s in slow:
            try:
                s.send(bytes([b]))
            except OSError:
                pass
        time.sleep(0.2)
th = threading.Thread(target=trickle)
th.start()
time.sleep(0.3)  # all 20 slots are taken before the normal client comes
p0 = pings()
t0 = time.time()
c = socket.create_connection(("127.0.0.1", port), timeout=10)
c.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
c.settimeout(10)
data = c.recv(4096)
served = time.time() - t0
p1 = pings()
stop = True
th.join()

print(f"served={data.startswith(b'HTTP/1.1 200')} after={served:.2f} pings={p1 - p0}")
PY
cat "$FH_TMP/slow.out"
served=$(sed -n 's/.*served=\([A-Za-z]*\).*/\1/p' "$FH_TMP/slow.out")
after=$(sed -n 's/.*after=\([0-9.]*\).*/\1/p' "$FH_TMP/slow.out")
pings=$(sed -n 's/.*pings=\([0-9]*\).*/\1/p' "$FH_TMP/slow.out")
check "20 slow clients on 20 slots: a normal client is served once they hit the 2 s head deadline (${after:-?} s)" \
    bash -c "[ '$served' = True ] && awk 'BEGIN{exit !($after >= 1.5 && $after < 3.5)}'"
check "the watchdog kept pinging all along (${pings:-0} pings while the slots were full)" \
    test "${pings:-0}" -ge 5
check "the daemon logged no watchdog trouble" bash -c "! grep -q 'watchdog:' '$FH_TMP/daemon.log'"
stop_daemon
finish
