#!/usr/bin/env bash
# test_stub.sh - the bundled stub model (tools/stub-llm, docs/stub-llm.md):
# the OpenAI shapes it answers with, directive-following answers, streaming,
# every fault it injects, the introspection routes, and that thousands of
# waiting requests cost no threads. Run by ctest (see tests/CMakeLists.txt).
. "$(dirname "$0")/lib.sh"

STUB=${FH_BINARY_DIR:?run through ctest}/bin/fusion-stub-llm
STUB_PID=
# lib.sh's EXIT trap removes $FH_TMP; keep doing that, and stop the stub.
trap 'stop_stub; rm -rf "$FH_TMP"' EXIT

stop_stub() {
    if [ -n "$STUB_PID" ]; then
        kill "$STUB_PID" 2>/dev/null
        wait "$STUB_PID" 2>/dev/null
        STUB_PID=
    fi
}

# wait_for SECONDS CMD...: polls CMD every 50 ms until it succeeds or the
# time is up (a condition, not a fixed sleep).
wait_for() {
    local deadline=$(($(date +%s%N) / 1000000 + $1 * 1000))
    shift
    until "$@"; do
        [ $(($(date +%s%N) / 1000000)) -ge "$deadline" ] && return 1
        sleep 0.05
    done
}

# req NAME METHOD PATH [BODY] [CURL ARGS...]: the body goes to $FH_TMP/body,
# the status to $CODE, curl's exit status to $RC, the body file is also the
# lib's "last output" so expect works on it.
req() {
    local method=$1 path=$2 body=${3-}
    shift 3 2>/dev/null || shift $#
    : >"$FH_TMP/out" # curl writes nothing when no answer comes
    if [ -n "$body" ]; then
        printf '%s' "$body" >"$FH_TMP/sent"
        CODE=$(curl -sS -o "$FH_TMP/out" -w '%{http_code}' -X "$method" \
            -H 'Content-Type: application/json' --data-binary @"$FH_TMP/sent" "$@" \
            "$URL$path" 2>"$FH_TMP/curl.err")
    else
        CODE=$(curl -sS -o "$FH_TMP/out" -w '%{http_code}' -X "$method" "$@" "$URL$path" \
            2>"$FH_TMP/curl.err")
    fi
    RC=$?
}

# check NAME CONDITION...: ok when the command succeeds, else shows the body.
check() {
    local name=$1
    shift
    if "$@"; then
        ok "$name"
    else
        not_ok "$name; last body:"
        head -c 2000 "$FH_TMP/out" | sed 's/^/    /'
        echo
    fi
}

jqt() { jq -e "$1" "$FH_TMP/out" >/dev/null 2>&1; }
code_is() { [ "$CODE" = "$1" ]; }
content() { jq -r '.choices[0].message.content' "$FH_TMP/out"; }
# The SSE data payloads of the last answer, one per line.
events() { sed -n 's/^data: //p' "$FH_TMP/out"; }
chunks() { events | grep -v '^\[DONE\]$'; }

if [ ! -x "$STUB" ]; then
    not_ok "$STUB is not built (cmake --build ... --target fusion-stub-llm)"
    finish
fi

# ---- start on a port chosen at run time -------------------------------------
PORT_FILE=$FH_TMP/stub.port
"$STUB" --listen 127.0.0.1:0 --port-file "$PORT_FILE" --quiet 2>"$FH_TMP/stub.log" &
STUB_PID=$!
if wait_for 10 test -s "$PORT_FILE"; then
    ok "stub wrote its port file"
else
    not_ok "stub did not write $PORT_FILE within 10 s:"
    sed 's/^/    /' "$FH_TMP/stub.log"
    finish
fi
PORT=$(cat "$PORT_FILE")
URL=http://127.0.0.1:$PORT
if grep -q "fusion-stub-llm listening on http://127.0.0.1:$PORT/v1" "$FH_TMP/stub.log"; then
    ok "listening line names the bound port"
else
    not_ok "no listening line for port $PORT:"
    sed 's/^/    /' "$FH_TMP/stub.log"
fi

# ---- models and plain answers ------------------------------------------------
req GET /v1/models
check "GET /v1/models lists the model" jqt \
    '.object == "list" and .data[0].id == "fusion-stub" and .data[0].object == "model"
     and .data[0].owned_by == "fusion-stub"'

USER_MSG='{"role":"user","content":"Customer 4411 was charged twice for order 981"}'
req POST /v1/chat/completions "{\"model\":\"gpt-test\",\"messages\":[$USER_MSG]}"
check "non-streaming answer: 200" code_is 200
check "non-streaming answer has the chat.completion shape" jqt \
    '(.id | startswith("chatcmpl-stub-")) and .object == "chat.completion"
     and (.created | type == "number") and .model == "gpt-test"
     and .choices[0].index == 0 and .choices[0].message.role == "assistant"
     and (.choices[0].message.content | length > 0) and .choices[0].finish_reason == "stop"'
# usage: (bytes + 3) / 4 + 4 per message; completion (bytes + 3) / 4.
USER_LEN=$(printf '%s' 'Customer 4411 was charged twice for order 981' | wc -c)
WANT_PROMPT=$(((USER_LEN + 3) / 4 + 4))
ANSWER_LEN=$(jq -j '.choices[0].message.content' "$FH_TMP/out" | wc -c)
WANT_COMPLETION=$(((ANSWER_LEN + 3) / 4))
check "usage is the deterministic estimate ($WANT_PROMPT + $WANT_COMPLETION)" jqt \
    ".usage.prompt_tokens == $WANT_PROMPT and .usage.completion_tokens == $WANT_COMPLETION
     and .usage.total_tokens == $((WANT_PROMPT + WANT_COMPLETION))"
GENERIC=$(content)
if printf '%s' "$GENERIC" | grep -Eqi 'rollback|roll back|revert|compensat|idempot|retry|state|transition|invariant|->|must |^[0-9]+\.'; then
    not_ok "no directive -> generic answer, but it has directive vocabulary: $GENERIC"
else
    ok "no directive -> generic answer without rollback/state vocabulary"
fi
req POST /v1/chat/completions "{\"messages\":[$USER_MSG]}"
check "model defaults to fusion-stub" jqt '.model == "fusion-stub"'
check "same request, same answer" test "$(content)" = "$GENERIC"

# The real directive texts when the config is there, else their gist.
directive() {
    if [ -r "$FH_SOURCE_DIR/config/micro_overlays/$1.md" ]; then
        jq -Rs . "$FH_SOURCE_DIR/config/micro_overlays/$1.md"
    else
        jq -Rn --arg t "$2" '$t'
    fi
}
ROLLBACK_SYS=$(directive rollback_first \
    "Plan the rollback first: numbered rollback steps, compensating actions, failure scenarios, idempotency.")
STATE_SYS=$(directive state_compliance_model \
    "Model the process as a state machine: states, transitions FROM -> TO, invariants, error states.")

req POST /v1/chat/completions "{\"messages\":[{\"role\":\"system\",\"content\":$ROLLBACK_SYS},$USER_MSG]}"
ANSWER=$(content)
has() { printf '%s' "$ANSWER" | grep -Eqi -- "$1"; }
numbered() { [ "$(printf '%s\n' "$ANSWER" | grep -Ec '^[0-9]+\. ')" -ge 3 ]; }
check "rollback directive -> numbered steps" numbered
check "rollback directive -> rollback/revert wording" has 'roll ?back|revert'
check "rollback directive -> compensating actions" has 'compensating action'
check "rollback directive -> failure scenarios with retry" has 'if .*(fails|times out).*retry'
check "rollback directive -> idempotency key, exactly once" \
    eval 'has "idempotency key" && has "exactly once"'
check "rollback answer names the scenario" has 'charged twice for order 981'

req POST /v1/chat/completions "{\"messages\":[{\"role\":\"system\",\"content\":$STATE_SYS},$USER_MSG]}"
ANSWER=$(content)
states() { [ "$(printf '%s\n' "$ANSWER" | grep -Ec '^- `[A-Z_]+`')" -ge 3 ]; }
arrows() { [ "$(printf '%s\n' "$ANSWER" | grep -Ec '[A-Z_]+ -> [A-Z_]+')" -ge 2 ]; }
check "state directive -> a list of states" states
check "state directive -> transitions a -> b" arrows
check "state directive -> an invariant that must always hold" \
    eval 'has "invariant" && has "must always"'
check "state directive -> an error state with recovery" \
    eval 'has "error state" && has "FAILED" && has "recover"'
check "state answer has no rollback plan" eval '! has "idempotency key"'

# ---- streaming ---------------------------------------------------------------
BASE="{\"messages\":[{\"role\":\"system\",\"content\":$ROLLBACK_SYS},$USER_MSG]"
req POST /v1/chat/completions "$BASE}"
# shellcheck disable=SC2034 # both used inside the eval strings below
FULL=$(content)
# shellcheck disable=SC2034
FULL_USAGE=$(jq -c .usage "$FH_TMP/out")
req POST /v1/chat/completions "$BASE,\"stream\":true}" -N -D "$FH_TMP/headers"
check "stream: 200 text/event-stream" \
    eval 'code_is 200 && grep -qi "^content-type: text/event-stream" "$FH_TMP/headers"'
check "stream: every event but the last is a chat.completion.chunk" \
    eval '[ "$(chunks | jq -r .object | sort -u)" = chat.completion.chunk ]'
check "stream: first chunk carries delta.role" \
    eval '[ "$(chunks | head -1 | jq -r ".choices[0].delta.role")" = assistant ]'
check "stream: several content chunks" eval '[ "$(chunks | wc -l)" -ge 10 ]'
check "stream: content reassembles to the non-streaming answer" \
    eval '[ "$(chunks | jq -j ".choices[0].delta.content // empty")" = "$FULL" ]'
check "stream: last chunk has finish_reason stop" \
    eval '[ "$(chunks | tail -1 | jq -r ".choices[0].finish_reason")" = stop ]'
check "stream: ends with data: [DONE]" eval '[ "$(events | tail -1)" = "[DONE]" ]'
check "stream: no usage unless asked" eval '! chunks | jq -e "has(\"usage\")" | grep -q true'

req POST /v1/chat/completions "$BASE,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" -N
check "include_usage: an extra last chunk with choices [] and the usage" \
    eval '[ "$(chunks | tail -1 | jq -c "select(.choices == []) | .usage")" = "$FULL_USAGE" ]'
check "include_usage: the other chunks say usage null" \
    eval '[ "$(chunks | head -n -1 | jq -c .usage | sort -u)" = null ]'
check "include_usage: [DONE] after the usage chunk" eval '[ "$(events | tail -1)" = "[DONE]" ]'

req POST /v1/chat/completions \
    "$BASE,\"stream\":true,\"stream_options\":{\"include_usage\":true},\"stub\":{\"usage_on_last_choice_chunk\":true}}" -N
check "usage_on_last_choice_chunk: usage rides on the finish chunk" \
    eval '[ "$(chunks | tail -1 | jq -c "select(.choices[0].finish_reason == \"stop\") | .usage")" = "$FULL_USAGE" ]'
check "usage_on_last_choice_chunk: no choices [] chunk" \
    eval '! chunks | jq -c .choices | grep -qx "\[\]"'

req POST /v1/chat/completions "$BASE,\"stream\":true,\"stub\":{\"chunk_delay_ms\":30}}" -N \
    -w '%{http_code} %{time_total}'
N_CHUNKS=$(chunks | wc -l)
check "chunk_delay_ms paces the stream (>= $N_CHUNKS x 30 ms)" \
    eval 'awk -v t="${CODE#* }" -v n="$N_CHUNKS" "BEGIN { exit !(t >= (n - 1) * 0.03) }"'

# ---- faults ------------------------------------------------------------------
M="\"messages\":[$USER_MSG]"
req POST /v1/chat/completions "{$M,\"stub\":{\"status\":503}}"
check "stub.status 503 -> 503 in the OpenAI error shape" eval 'code_is 503 && jqt \
    "(.error.message | type == \"string\") and .error.type == \"server_error\" and .error.code == \"stub_fault\""'
req POST /v1/chat/completions "{$M}" -H 'X-Stub-Fault: status=429'
check "X-Stub-Fault: status=429 -> 429" eval 'code_is 429 && jqt ".error.code == \"stub_fault\""'

req POST /v1/chat/completions "{$M,\"stub\":{\"delay_ms\":700}}" -w '%{http_code} %{time_total}'
check "delay_ms 700 -> 200 after >= 0.7 s (took ${CODE#* } s)" \
    eval '[ "${CODE% *}" = 200 ] && awk -v t="${CODE#* }" "BEGIN { exit !(t >= 0.7) }"'
req POST /v1/chat/completions "{$M}" -H 'X-Stub-Fault: delay_ms=300, status=502' \
    -w '%{http_code} %{time_total}'
check "header delay_ms=300,status=502 -> 502 after >= 0.3 s" \
    eval '[ "${CODE% *}" = 502 ] && awk -v t="${CODE#* }" "BEGIN { exit !(t >= 0.3) }"'

req POST /v1/chat/completions "{$M,\"stub\":{\"reset\":true}}"
check "reset -> the connection closes without an answer (curl exit $RC)" \
    eval '[ "$RC" -ne 0 ] && [ ! -s "$FH_TMP/out" ]'

req POST /v1/chat/completions "{$M,\"stub\":{\"malformed\":true}}"
check "malformed -> 200 with a body that is not JSON" \
    eval 'code_is 200 && [ -s "$FH_TMP/out" ] && ! jq . "$FH_TMP/out" >/dev/null 2>&1'
req POST /v1/chat/completions "{$M,\"stream\":true,\"stub\":{\"malformed\":true}}" -N
check "malformed stream -> an event that is not JSON" \
    eval '! chunks | jq . >/dev/null 2>&1'

req POST /v1/chat/completions "{$M,\"stream\":true,\"stub\":{\"break_after_chunks\":2}}" -N
check "break_after_chunks 2 -> 2 events, no [DONE], transfer error (curl exit $RC)" \
    eval '[ "$RC" -ne 0 ] && [ "$(events | wc -l)" -eq 2 ] && ! events | grep -q DONE'

req POST /v1/chat/completions "{$M,\"stream\":true,\"stub\":{\"stall_after_chunks\":2}}" -N \
    --max-time 2
check "stall_after_chunks 2 -> 2 events, then curl times out (exit $RC)" \
    eval '[ "$RC" -eq 28 ] && [ "$(events | wc -l)" -eq 2 ]'
idle() { [ "$(curl -s "$URL/stub/stats" | jq .in_flight)" = 0 ]; }
check "a stalled stream is dropped once its client goes away" wait_for 5 idle

SYS_MSG='{"role":"system","content":"You are terse."}'
req POST /v1/chat/completions "{\"messages\":[$SYS_MSG,$USER_MSG],\"stub\":{\"reject_if_system\":true}}"
check "reject_if_system with a system message -> 400" \
    eval 'code_is 400 && jqt ".error.code == \"stub_reject_system\""'
req POST /v1/chat/completions "{\"messages\":[$USER_MSG],\"stub\":{\"reject_if_system\":true}}"
check "reject_if_system without one -> 200" code_is 200

req POST /v1/chat/completions "{$M,\"stub\":{\"explode\":1}}"
check "an unknown fault -> 400 naming the known ones" \
    eval 'code_is 400 && jqt ".error.code == \"invalid_stub_fault\"" && grep -q stall_after_chunks "$FH_TMP/out"'

# ---- introspection -----------------------------------------------------------
req DELETE /stub/requests
check "DELETE /stub/requests" code_is 200
printf '{ "messages" : [ {"role":"user","content":"caf\xc3\xa9 \\u00e9\\n  \xe2\x82\xac"} ],\n  "temperature": 0.25, "fusion-extra": [1,2] }\n' \
    >"$FH_TMP/odd.json"
curl -s -o /dev/null -H 'Authorization: Bearer sk-stub-test' -H 'Content-Type: application/json' \
    --data-binary @"$FH_TMP/odd.json" "$URL/v1/chat/completions"
req GET /stub/last
check "GET /stub/last returns the body byte for byte" cmp -s "$FH_TMP/out" "$FH_TMP/odd.json"
req GET /stub/requests
check "GET /stub/requests records body and headers" jqt \
    'length == 1 and .[0].authorization == "Bearer sk-stub-test"
     and .[0].content_type == "application/json" and .[0].body.temperature == 0.25
     and .[0].body["fusion-extra"] == [1,2]'
for i in 1 2 3; do
    curl -s -o /dev/null -d "{\"messages\":[{\"role\":\"user\",\"content\":\"n$i\"}]}" \
        "$URL/v1/chat/completions"
done
req GET /stub/requests
check "GET /stub/requests is oldest first" jqt \
    '[.[].body.messages[0].content] == ["café é\n  €", "n1", "n2", "n3"]'
req GET /stub/stats
check "GET /stub/stats has requests, in_flight, max_in_flight" jqt \
    '(.requests | type == "number") and .in_flight == 0 and (.max_in_flight >= 1)'

# ---- bad input ---------------------------------------------------------------
req POST /v1/chat/completions '{"messages": [ {"role":'
check "bad JSON -> 400 invalid_json" eval 'code_is 400 && jqt \
    ".error.code == \"invalid_json\" and .error.type == \"invalid_request_error\" and (.error.message | length > 0)"'
req POST /v1/chat/completions '[1,2]'
check "a JSON array -> 400" eval 'code_is 400 && jqt ".error.code == \"invalid_json\""'
req POST /v1/chat/completions '{"model":"x"}'
check "no messages -> 400" eval 'code_is 400 && jqt ".error.code == \"invalid_messages\""'
req POST /v1/chat/completions '{"messages":[{"content":"no role"}]}'
check "a message without a role -> 400" code_is 400
req POST /v1/chat/completions '{"messages":"hello"}'
check "messages not an array -> 400" code_is 400
head -c $((9 * 1024 * 1024)) /dev/zero | tr '\0' ' ' >"$FH_TMP/big.json"
CODE=$(curl -s -o "$FH_TMP/out" -w '%{http_code}' --data-binary @"$FH_TMP/big.json" \
    "$URL/v1/chat/completions")
check "a 9 MiB body -> 413" eval 'code_is 413 && jqt ".error.code == \"body_too_large\""'
req GET /v1/chat/completions
check "GET on chat completions -> 405" code_is 405
req GET /nowhere
check "unknown path -> 404 in the error shape" eval 'code_is 404 && jqt ".error.message"'
check "still serving after bad input" eval 'req GET /v1/models; code_is 200'

# ---- 200 concurrent slow requests, a handful of threads --------------------
curl -s -o /dev/null -X DELETE "$URL/stub/stats"
URLS=()
for i in $(seq 200); do URLS+=("$URL/v1/chat/completions"); done
START=$(date +%s%N)
curl -s -Z --parallel-immediate --parallel-max 200 \
    -d "{$M,\"stub\":{\"delay_ms\":500}}" "${URLS[@]}" >"$FH_TMP/parallel.out" 2>/dev/null &
CURL_PID=$!
all_waiting() { [ "$(curl -s "$URL/stub/stats" | jq .in_flight)" -ge 200 ]; }
if wait_for 10 all_waiting; then
    ok "200 requests in flight at once"
else
    not_ok "never saw 200 requests in flight: $(curl -s "$URL/stub/stats")"
fi
THREADS=$(ls "/proc/$STUB_PID/task" | wc -l)
check "thread count with 200 waiting requests is small ($THREADS)" test "$THREADS" -lt 10
wait "$CURL_PID"
ELAPSED_MS=$((($(date +%s%N) - START) / 1000000))
check "all 200 answered" eval '[ "$(grep -o chatcmpl-stub- "$FH_TMP/parallel.out" | wc -l)" -eq 200 ]'
check "in ${ELAPSED_MS} ms, far below 200 x 500 ms" test "$ELAPSED_MS" -lt 10000
req GET /stub/stats
check "max_in_flight reached 200" jqt '.max_in_flight >= 200 and .in_flight == 0'

# ---- clean stop --------------------------------------------------------------
# A request still waiting must not keep the stub from stopping.
curl -s -o /dev/null -d "{$M,\"stub\":{\"delay_ms\":60000}}" "$URL/v1/chat/completions" &
WAITER=$!
one_waiting() { [ "$(curl -s "$URL/stub/stats" | jq .in_flight)" = 1 ]; }
wait_for 5 one_waiting
kill -TERM "$STUB_PID"
gone() { ! kill -0 "$STUB_PID" 2>/dev/null; }
if wait_for 10 gone; then
    wait "$STUB_PID"
    RC=$?
    STUB_PID=
    check "SIGTERM with a waiting request -> exit 0" test "$RC" -eq 0
    check "port file removed on exit" test ! -e "$PORT_FILE"
else
    not_ok "stub did not stop within 10 s of SIGTERM"
fi
wait "$WAITER" 2>/dev/null

finish
