#!/usr/bin/env bash
# SIGHUP applies the whole configuration to new requests, or refuses it
# (naming the setting) and keeps serving with the old one: a second
# upstream, new timeouts and limits, edited directive texts and overlay
# config (a new generation), a new plugin folder; listen, workers and a
# missing plugin folder are refused. Requests in flight finish with the
# config they started with.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

start_stub
STUB_A=$STUB STUB_A_PID=$STUB_PID
rm -f "$FH_TMP/stub.port"
"$STUB_BIN" --listen 127.0.0.1:0 --port-file "$FH_TMP/stub.port" --quiet >>"$FH_TMP/stub.log" 2>&1 &
STUB_B_PID=$!
wait_for 10 test -s "$FH_TMP/stub.port" || { echo "stub B did not start"; exit 1; }
STUB_B="http://127.0.0.1:$(cat "$FH_TMP/stub.port")"
trap 'kill "$STUB_B_PID" 2>/dev/null; cleanup_daemons' EXIT

cfg=$(make_config "$FH_TMP/d" "$STUB_A/v1")
dir=$(dirname "$cfg")
start_daemon "$cfg"
requests() { curl -s "$1/stub/stats" | jq .requests; }
reloads() { grep -c 'reloaded;' "$FH_TMP/daemon.log"; }
failures() { grep -c 'reload failed' "$FH_TMP/daemon.log"; }
# hup: SIGHUP, then waits until the daemon says it reloaded or refused.
hup() {
    local r=$(reloads) f=$(failures)
    kill -HUP "$FH_PID"
    wait_for 10 bash -c "[ \$(grep -c 'reloaded;' '$FH_TMP/daemon.log') -gt $r ] || [ \$(grep -c 'reload failed' '$FH_TMP/daemon.log') -gt $f ]"
}
refund='{"model":"m","messages":[{"role":"user","content":"Order 4411 was refunded twice."}],"fusion":{"scenario_type":"refund_processing_duplicate","confidence":0.9}}'

post /v1/chat/completions "$refund"
check "before: served by upstream A" bash -c "[ $STATUS = 200 ] && [ $(requests "$STUB_A") = 1 ] && [ $(requests "$STUB_B") = 0 ]"

# A request waiting on A while the config moves to B.
curl -s -o "$FH_TMP/inflight" -w '%{http_code}' -H 'Content-Type: application/json' --max-time 20 \
    --data-binary '{"model":"m","stub":{"delay_ms":1500},"messages":[{"role":"user","content":"x"}]}' \
    "$FH/v1/chat/completions" >"$FH_TMP/inflight.status" &
INFLIGHT=$!
wait_for 5 bash -c "[ \$(curl -s '$STUB_A/stub/stats' | jq .in_flight) = 1 ]"

cp "$cfg" "$cfg.orig"
sed -i -e "s|base_url: .*|base_url: \"$STUB_B/v1\"|" -e 's|timeout_ms: .*|timeout_ms: 700|' \
    -e 's|^limits: .*|limits: { max_body_bytes: 2048, max_connections: 10000 }|' "$cfg"
for f in "$dir"/micro_overlays/*.md; do printf '\nReload marker: MARKER-7731.\n' >>"$f"; done
sed -i 's|^  refund_lot_switch: {|  refund_lot_switch: { config: { temperature: 0.2 },|' "$cfg"
hup
check "SIGHUP with a new upstream, timeout, limits and texts: reloaded" grep -q 'reloaded;' "$FH_TMP/daemon.log"
check "the overlay whose texts and config changed is re-initialised" \
    grep -q 'overlay refund_lot_switch: its config or directive texts changed; re-initialised' "$FH_TMP/daemon.log"
post /v1/chat/completions "$refund"
check "after: new requests go to upstream B" bash -c "[ $STATUS = 200 ] && [ $(requests "$STUB_B") = 1 ] && [ $(requests "$STUB_A") = 2 ]"
check "the edited directive text is what the upstream receives" \
    bash -c "curl -s '$STUB_B/stub/last' | grep -q MARKER-7731"
wait $INFLIGHT
check "the request in flight finished on upstream A with the old timeout ($(cat "$FH_TMP/inflight.status"))" \
    bash -c "[ \"\$(cat '$FH_TMP/inflight.status')\" = 200 ] && [ \$(curl -s '$STUB_A/stub/stats' | jq .in_flight) = 0 ]"
post /v1/chat/completions '{"model":"m","stub":{"delay_ms":1500},"messages":[{"role":"user","content":"x"}]}'
check "the new upstream.timeout_ms (700 ms) applies: 504 with X-Fusion-Request-Id" \
    bash -c "[ $STATUS = 504 ] && grep -qi '^X-Fusion-Request-Id: fh-' '$FH_TMP/headers'"
big=$(head -c 3000 /dev/zero | tr '\0' 'a')
post /v1/chat/completions "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"$big\"}]}"
check "the smaller limits.max_body_bytes applies: 413" [ "$STATUS" = 413 ]

# Settings that cannot change live: refused by name, the old config serves.
port=${FH##*:}
cp "$cfg" "$cfg.b"
sed -i "s|^listen: .*|listen: \"127.0.0.1:1\"|" "$cfg"
hup
check "a changed listen is refused, naming it" \
    grep -q 'reload failed: listen changed, and it cannot change while running' "$FH_TMP/daemon.log"
post /v1/chat/completions "$refund"
check "and the running config still serves on the old port (upstream B)" \
    bash -c "[ $STATUS = 200 ] && [ $(requests "$STUB_B") = 3 ]"
cp "$cfg.b" "$cfg"
printf 'workers: 7\n' >>"$cfg"
hup
check "a changed workers count is refused, naming it" \
    grep -q 'reload failed: workers changed' "$FH_TMP/daemon.log"
cp "$cfg.b" "$cfg"
sed -i 's|^  dir: "plugins"|  dir: "no-such-folder"|' "$cfg"
hup
check "plugins.dir pointing at a missing folder is refused" \
    grep -q 'reload failed: plugins.dir .*no-such-folder cannot be read' "$FH_TMP/daemon.log"

# A new plugin folder: its overlays replace the old folder's.
mkdir -p "$dir/plugins2" && chmod 755 "$dir/plugins2"
cp "$FH_PLUGIN_DIR/state_model_first.so" "$dir/plugins2/"
sed -i 's|^  dir: .*|  dir: "plugins2"|' "$cfg"
hup
check "a new plugins.dir reloads" bash -c "tail -n 3 '$FH_TMP/daemon.log' | grep -q 'reloaded;'"
check "the old folder's overlay is unloaded" \
    grep -q 'overlay refund_lot_switch: plugins.dir moved to' "$FH_TMP/daemon.log"
post /v1/chat/completions "$refund"
check "a refund request no longer gets refund_lot_switch ($(header X-Fusion-Overlay))" \
    bash -c "[ $STATUS = 200 ] && [ '$(header X-Fusion-Overlay)' != refund_lot_switch/1.0.0 ]"
check "/health counts the new folder's overlay only" \
    bash -c "curl -s '$FH/health' | jq -e '.overlays.enabled == 1' >/dev/null"
# Files are loaded once; a refused one is tried again at the next reload;
# two versions of one overlay in the folder do not swap at every reload.
printf 'not a plugin\n' >"$dir/plugins2/good_a.so"
cp "$FH_TEST_PLUGIN_DIR/good_a_v2.so" "$dir/plugins2/good_a_v2.so"
hup
check "a refused file is reported failed" \
    bash -c "curl -s '$FH/health' | jq -e '.overlays.failed == 1' >/dev/null"
cp "$FH_TEST_PLUGIN_DIR/good_a.so" "$dir/plugins2/good_a.so.tmp"
mv "$dir/plugins2/good_a.so.tmp" "$dir/plugins2/good_a.so"
hup
check "fixed, it loads at the next reload (no failed left)" \
    bash -c "curl -s '$FH/health' | jq -e '.overlays.failed == 0' >/dev/null"
swaps=$(grep -c 'overlay good_a: swapped' "$FH_TMP/daemon.log")
hup
hup
check "two versions of one overlay in the folder: reloads swap nothing ($swaps swap(s) before, $(grep -c 'overlay good_a: swapped' "$FH_TMP/daemon.log") after)" \
    test "$(grep -c 'overlay good_a: swapped' "$FH_TMP/daemon.log")" = "$swaps"

# A body on its way when the limit shrinks: the request keeps its limit.
sed -i 's|^limits: .*|limits: { max_body_bytes: 65536, max_connections: 10000 }|' "$cfg"
hup
python3 - "${FH##*:}" "$FH_TMP" >"$FH_TMP/inflight_body.out" <<'PY' &
import json, os, socket, sys, time
port, tmp = int(sys.argv[1]), sys.argv[2]
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 3000}]}).encode()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000])
open(tmp + "/body.sent", "w").close()
deadline = time.time() + 10
while not os.path.exists(tmp + "/body.go") and time.time() < deadline:
    time.sleep(0.02)
s.sendall(body[1000:])
s.settimeout(10)
print(s.recv(100).split(b"\r\n")[0].decode())
PY
BODY=$!
wait_for 5 test -e "$FH_TMP/body.sent"
sed -i 's|^limits: .*|limits: { max_body_bytes: 2048, max_connections: 10000 }|' "$cfg"
hup
touch "$FH_TMP/body.go"
wait $BODY
check "a body on its way when max_body_bytes shrinks keeps its limit ($(cat "$FH_TMP/inflight_body.out"))" \
    grep -q '^HTTP/1.1 200' "$FH_TMP/inflight_body.out"
post /v1/chat/completions "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"$big\"}]}"
check "while a new request gets the new limit: 413" [ "$STATUS" = 413 ]
stop_daemon
check "exit 0" [ $? = 0 ]
finish
