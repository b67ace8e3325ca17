#!/usr/bin/env bash
# OpenAI conformance (issue 9), as an SDK user meets it: null fields taken as
# "not given", numbers the host does not read passed on as written, and a
# stream whose upstream fails after it began ends with one error event in
# the OpenAI shape and a clean end, never a transport error or an invalid
# event passed on.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

start_stub
FH_TEST_TIMEOUT_MS=1000 # timeout_ms and idle_timeout_ms
start_daemon "$(make_config "$FH_TMP/d")"

# ---- paths --------------------------------------------------------------------------------
post /v1/chat/completions/ '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
check "a trailing slash is tolerated (/v1/chat/completions/)" [ "$STATUS" = 200 ]
STATUS=$(curl -s -o /dev/null -w '%{http_code}' "$FH/v1/models/?limit=1")
check "and a query string (/v1/models/?limit=1)" [ "$STATUS" = 200 ]

# ---- every other /v1/ endpoint, relayed -------------------------------------------------------
post /v1/embeddings '{"model":"text-embedding-3-small","input":"hello"}'
check "POST /v1/embeddings reaches the upstream as sent; its status (201) comes back" \
    bash -c "[ $STATUS = 201 ] && jq -e '.method == \"POST\" and .path == \"/v1/embeddings\" and .bytes == 50 and .content_type == \"application/json\"' '$FH_TMP/body' >/dev/null"
check "with the upstream's x-request-id and our X-Fusion-Request-Id" \
    bash -c "grep -qi '^x-request-id: req_stub_' '$FH_TMP/headers' && grep -qi '^X-Fusion-Request-Id: fh-' '$FH_TMP/headers'"
head -c 60000 /dev/urandom >"$FH_TMP/upload.bin"
want=$(python3 -c "import sys; h=2166136261
for b in open(sys.argv[1],'rb').read(): h=((h^b)*16777619)&0xffffffff
print(h)" "$FH_TMP/upload.bin")
STATUS=$(curl -s -o "$FH_TMP/body" -w '%{http_code}' -H 'Content-Type: application/octet-stream' \
    --data-binary @"$FH_TMP/upload.bin" "$FH/v1/files?q=upload")
check "a 60 kB binary upload arrives byte for byte (FNV-1a $want), with its content type and query" \
    bash -c "[ $STATUS = 201 ] && jq -e '.bytes == 60000 and .fnv1a == $want and .content_type == \"application/octet-stream\" and .q == \"upload\"' '$FH_TMP/body' >/dev/null"
curl -s -o "$FH_TMP/download.bin" -D "$FH_TMP/headers" "$FH/v1/files/file-abc/content"
python3 -c "import sys; sys.stdout.buffer.write(bytes(i & 255 for i in range(4096)))" >"$FH_TMP/want.bin"
check "a binary download comes back byte for byte (application/octet-stream)" \
    bash -c "cmp -s '$FH_TMP/download.bin' '$FH_TMP/want.bin' && grep -qi '^content-type: application/octet-stream' '$FH_TMP/headers'"
STATUS=$(curl -s -o "$FH_TMP/body" -w '%{http_code}' -X DELETE "$FH/v1/files/file-abc")
check "DELETE /v1/files/ID is relayed" bash -c "[ $STATUS = 201 ] && jq -e '.method == \"DELETE\"' '$FH_TMP/body' >/dev/null"
STATUS=$(curl -s -o "$FH_TMP/body" -w '%{http_code}' "$FH/v1/models/gpt-x?q=1")
check "GET /v1/models/ID with a query is relayed" \
    bash -c "[ $STATUS = 201 ] && jq -e '.path == \"/v1/models/gpt-x\" and .q == \"1\"' '$FH_TMP/body' >/dev/null"
curl -s -o /dev/null "$FH/v1/not-yet-invented/thing"
for p in '/v1/../../admin' '/v1/files/%2e%2e/%2E%2E/admin' '/v1/./models'; do
    STATUS=$(curl -s --path-as-is -o "$FH_TMP/body" -w '%{http_code}' "$FH$p")
    check "a proxied path with dot segments is refused, never relayed ($p: $STATUS)" \
        bash -c "[ $STATUS = 400 ] && jq -e '.error.code == \"invalid_path\"' '$FH_TMP/body' >/dev/null"
done
STATUS=$(curl -s -o /dev/null -w '%{http_code}' -X TRACE "$FH/v1/files")
check "methods the API does not use (TRACE) are not relayed ($STATUS)" [ "$STATUS" = 405 ]
STATUS=$(curl -s -o "$FH_TMP/body" -w '%{http_code}' "$FH/v1/chat/completions?limit=2")
check "GET /v1/chat/completions (stored completions) is relayed: the stub's own answer" \
    bash -c "[ $STATUS = 405 ] && jq -e '.error.message == \"GET is not allowed on /v1/chat/completions\"' '$FH_TMP/body' >/dev/null"
check "counted in the metrics by a bounded route label (embeddings, files, other)" \
    bash -c "curl -s '$FH/metrics' | grep -q 'fusion_requests_total{overlay=\"baseline\",scenario=\"embeddings\",result=\"proxied\"} 1' && curl -s '$FH/metrics' | grep -q 'scenario=\"other\",result=\"proxied\"'"

# ---- models that refuse sampling parameters -----------------------------------------------
refund_for() { echo "{\"model\":\"$1\",${2:+$2,}\"messages\":[{\"role\":\"user\",\"content\":\"Order 4411 was refunded twice.\"}],\"fusion\":{\"scenario_type\":\"refund_processing_duplicate\",\"confidence\":0.9}}"; }
post /v1/chat/completions "$(refund_for gpt-4o)"
check "gpt-4o: the overlay's sampling parameters go upstream" \
    bash -c "curl -s '$STUB/stub/last' | jq -e '.temperature and .top_p and .max_tokens' >/dev/null"
post /v1/chat/completions "$(refund_for o3-mini)"
check "o3-mini (a reasoning model): the overlay's temperature, top_p and penalties are dropped, max_tokens becomes max_completion_tokens" \
    bash -c "[ $STATUS = 200 ] && [ '$(header X-Fusion-Reason)' = applied ] && curl -s '$STUB/stub/last' | jq -e '(has(\"temperature\") or has(\"top_p\") or has(\"presence_penalty\") or has(\"frequency_penalty\") or has(\"max_tokens\") | not) and .max_completion_tokens == 2048' >/dev/null"
post /v1/chat/completions "$(refund_for gpt-5-mini '"temperature":1')"
check "what the caller sent itself stays (gpt-5-mini with the caller's temperature 1)" \
    bash -c "curl -s '$STUB/stub/last' | jq -e '.temperature == 1 and (has(\"top_p\") | not)' >/dev/null"

# ---- request fields --------------------------------------------------------------------
post /v1/chat/completions '{"model":"m","stream":null,"messages":[{"role":"user","content":"hi"}]}'
check "\"stream\": null is \"not given\": a plain answer" \
    bash -c "[ $STATUS = 200 ] && jq -e '.object == \"chat.completion\"' '$FH_TMP/body' >/dev/null"
post /v1/chat/completions '{"model":"m","stream":true,"stream_options":null,"messages":[{"role":"user","content":"hi"}]}'
check "stream=True with stream_options=None (what the SDK sends): a stream" \
    bash -c "[ $STATUS = 200 ] && grep -q '^data: \[DONE\]' '$FH_TMP/body'"
check "and usage, asked for by the host, is not shown to the client" \
    bash -c "! grep -q '\"usage\":{' '$FH_TMP/body'"
body='{"model":"m","seed":18446744073709551615,"messages":[{"role":"user","content":"hi"}],"fusion":{"scenario_type":"none"}}'
post /v1/chat/completions "$body"
check "a seed of 2^64-1: 200, not a 400" [ "$STATUS" = 200 ]
check "and the upstream gets it as written" bash -c "curl -s '$STUB/stub/last' | grep -q '\"seed\":18446744073709551615[,}]'"
body='{"model":"m","x_vendor":1e400,"logit_bias":{"50256":-100},"messages":[{"role":"user","content":"hi"}]}'
post /v1/chat/completions "$body"
check "a vendor field of 1e400: the gateway does not refuse it (the stub's own JSON parser does: $(jq -r .error.code "$FH_TMP/body"))" \
    bash -c "[ \"\$(jq -r .error.code '$FH_TMP/body')\" != invalid_body ]"
check "a baseline request goes upstream byte for byte" bash -c "[ \"\$(curl -s '$STUB/stub/last')\" = '$body' ]"

# ---- streams that fail after they began --------------------------------------------------
stream() { # stream FAULTS: the daemon's SSE body in $FH_TMP/sse, curl's exit in $CURL_RC
    curl -s -N -o "$FH_TMP/sse" --max-time 10 -H 'Content-Type: application/json' \
        --data-binary "{\"model\":\"m\",\"stream\":true,\"stub\":{$1},\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" \
        "$FH/v1/chat/completions"
    CURL_RC=$?
}
error_event() { # the last event is an OpenAI error with CODE, all four fields
    tail -n 2 "$FH_TMP/sse" | sed -n 's/^data: //p' | jq -e --arg c "$1" \
        '.error | (.code == $c) and has("message") and has("type") and (.param == null)' >/dev/null
}
stream '"break_after_chunks":2'
check "upstream cut mid-stream: the events so far, then one error event (upstream_broken)" \
    bash -c "[ \$(grep -c '^data: {\"id\"' '$FH_TMP/sse') = 2 ] && $(declare -f error_event); error_event upstream_broken"
check "and a clean end of the stream (curl exit $CURL_RC), no [DONE]" \
    bash -c "[ $CURL_RC = 0 ] && ! grep -q '\[DONE\]' '$FH_TMP/sse'"
stream '"malformed":1'
check "a malformed event from the upstream is not passed on" \
    bash -c "grep '^data: ' '$FH_TMP/sse' | sed 's/^data: //' | while read -r l; do echo \"\$l\" | jq -e . >/dev/null || exit 1; done"
check "nor anything after it ([DONE] included)" bash -c "! grep -q '\[DONE\]' '$FH_TMP/sse'"
check "it ends the stream with an error event (upstream_invalid), cleanly (curl exit $CURL_RC)" \
    bash -c "[ $CURL_RC = 0 ] && $(declare -f error_event); error_event upstream_invalid"
# Timeouts that fit long generations (timeout_ms and idle_timeout_ms are
# both 1000 here): a stall ends within 10% of the idle timeout; a healthy
# stream slower than timeout_ms in all is never cut; a head that does not
# come within timeout_ms is a 504.
t0=$(date +%s.%N)
stream '"stall_after_chunks":2'
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b - a}')
check "a stream that stalls ends with an error event (upstream_timeout)" \
    bash -c "[ $CURL_RC = 0 ] && $(declare -f error_event); error_event upstream_timeout"
check "after idle_timeout_ms 1000 within 10% ($took s)" awk -v t="$took" 'BEGIN{exit !(t >= 0.95 && t <= 1.15)}'
t0=$(date +%s.%N)
stream '"chunk_delay_ms":300'
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b - a}')
check "a healthy stream of $took s (13 events 300 ms apart, over timeout_ms 1000) is not cut" \
    bash -c "[ $CURL_RC = 0 ] && grep -q '^data: \[DONE\]' '$FH_TMP/sse' && ! grep -q '\"error\"' '$FH_TMP/sse' && awk -v t=$took 'BEGIN{exit !(t > 3)}'"
t0=$(date +%s.%N)
stream '"delay_ms":3000'
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b - a}')
check "a stream whose head does not come within timeout_ms 1000: 504 after $took s" \
    bash -c "jq -e '.error.code == \"upstream_timeout\"' '$FH_TMP/sse' >/dev/null && awk -v t=$took 'BEGIN{exit !(t >= 0.95 && t <= 1.15)}'"
# ---- headers, both ways ---------------------------------------------------------------------
stub_headers() { curl -s "$STUB/stub/requests" | jq -c '.[-1].headers'; }
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}' \
    -H 'OpenAI-Organization: org-42' -H 'OpenAI-Project: proj-7' -H 'User-Agent: OpenAI/Python 1.99' \
    -H 'X-Request-Id: caller-rid-1' -H 'Idempotency-Key: idem-9' -H 'Authorization: Bearer sk-caller' \
    -H 'X-Fusion-Scenario-Type: none' -H 'X-Other: not-forwarded'
h=$(stub_headers)
check "User-Agent, X-Request-Id, Idempotency-Key go upstream" \
    bash -c "echo '$h' | jq -e '.\"user-agent\" == \"OpenAI/Python 1.99\" and .\"x-request-id\" == \"caller-rid-1\" and .\"idempotency-key\" == \"idem-9\"' >/dev/null"
check "with the operator's key the caller does not pick its organization or project" \
    bash -c "echo '$h' | jq -e '(has(\"openai-organization\") or has(\"openai-project\")) | not' >/dev/null"
check "X-Fusion-* and other caller headers do not" \
    bash -c "echo '$h' | jq -e '(keys | map(select(startswith(\"x-fusion\"))) | length == 0) and (has(\"x-other\") | not)' >/dev/null"
check "the upstream gets the operator's key, never the caller's" \
    bash -c "echo '$h' | jq -e '.authorization == \"Bearer sk-test-secret-42\"' >/dev/null"
check "the answer headers a client reads come back (x-request-id, openai-processing-ms, x-ratelimit-*)" \
    bash -c "grep -qi '^x-request-id: req_stub_' '$FH_TMP/headers' && grep -qi '^openai-processing-ms: 1' '$FH_TMP/headers' && grep -qi '^x-ratelimit-remaining-requests: 99' '$FH_TMP/headers'"
check "hop-by-hop ones do not (Keep-Alive)" bash -c "! grep -qi '^keep-alive:' '$FH_TMP/headers'"
post /v1/chat/completions '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
check "a stream carries them too" bash -c "grep -qi '^x-request-id: req_stub_' '$FH_TMP/headers'"
post /v1/chat/completions '{"model":"m","stub":{"status":429},"messages":[{"role":"user","content":"hi"}]}'
check "a 429 with Retry-After: 7 reaches the client with it" \
    bash -c "[ $STATUS = 429 ] && grep -qi '^retry-after: 7' '$FH_TMP/headers'"
stop_daemon

# upstream.forward_client_key: the caller's own key goes upstream instead.
cfg=$(make_config "$FH_TMP/k")
sed -i 's|^  api_key_env: .*|&\n  forward_client_key: true|' "$cfg"
start_daemon "$cfg"
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}' -H 'Authorization: Bearer sk-caller-own'
check "forward_client_key: true: the caller's Authorization goes upstream, the operator's does not" \
    bash -c "[ $STATUS = 200 ] && curl -s '$STUB/stub/requests' | jq -e '.[-1].headers.authorization == \"Bearer sk-caller-own\"' >/dev/null"
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}' -H 'Authorization: Bearer sk-caller-own' \
    -H 'OpenAI-Organization: org-42' -H 'OpenAI-Project: proj-7'
check "and then its OpenAI-Organization and -Project go with it" \
    bash -c "curl -s '$STUB/stub/requests' | jq -e '.[-1].headers.\"openai-organization\" == \"org-42\" and .[-1].headers.\"openai-project\" == \"proj-7\"' >/dev/null"
stop_daemon

# ---- caller authentication (auth.keys_file) ---------------------------------------------------
keys=$FH_TMP/clients.keys
{
    echo "# name  sha256 of the key"
    echo "alice $(printf %s sk-alice-1 | sha256sum | cut -d' ' -f1)"
    echo "bob   $(printf %s sk-bob-2 | sha256sum | cut -d' ' -f1)"
} >"$keys"
cfg=$(make_config "$FH_TMP/a")
printf 'auth: { keys_file: "%s" }\n' "$keys" >>"$cfg"
# Half the rollout keys get the overlay: the client's name must decide.
sed -i '0,/rollout_percentage:/s/rollout_percentage:[[:space:]]*[0-9]*/rollout_percentage: 50/' \
    "$(dirname "$cfg")/overlay_feature_flags.yaml"
FH_TEST_LOG_LEVEL=debug start_daemon "$cfg"
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}'
check "no key: 401 in the OpenAI shape (invalid_api_key, param null)" \
    bash -c "[ $STATUS = 401 ] && jq -e '.error.code == \"invalid_api_key\" and .error.param == null and .error.type == \"invalid_request_error\"' '$FH_TMP/body' >/dev/null"
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}' -H 'Authorization: Bearer sk-mallory'
check "an unknown key: 401" [ "$STATUS" = 401 ]
post /v1/models '' -X GET -H 'Authorization: Bearer sk-bob-2'
check "/v1/models needs a key too, and bob's works" [ "$STATUS" = 200 ]
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}' -H 'Authorization: Bearer sk-alice-1'
check "alice's key: 200" [ "$STATUS" = 200 ]
check "the upstream gets the operator's key, not alice's" \
    bash -c "curl -s '$STUB/stub/requests' | jq -e '.[-1].headers.authorization == \"Bearer sk-test-secret-42\"' >/dev/null"
check "/health and /metrics need no key" \
    bash -c "[ \$(curl -s -o /dev/null -w '%{http_code}' '$FH/health') = 200 ] && [ \$(curl -s -o /dev/null -w '%{http_code}' '$FH/metrics') = 200 ]"
check "the client's name is logged (FUSION_CLIENT=alice)" grep -q 'alice' "$FH_TMP/daemon.log"
decisions=
for i in 1 2 3 4 5 6; do
    post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"Order 4411 was refunded twice."}],"fusion":{"scenario_type":"refund_processing","confidence":0.9}}' \
        -H 'Authorization: Bearer sk-alice-1'
    decisions="$decisions $(header X-Fusion-Reason)"
done
check "with no key or scenario_id in the request, alice's name is the rollout key: one decision ($decisions)" \
    bash -c "[ \$(echo '$decisions' | tr ' ' '\n' | sed '/^$/d' | sort -u | wc -l) = 1 ]"
check "no key, the client's or the operator's, appears in the log or the metrics" \
    bash -c "! grep -qE 'sk-alice-1|sk-bob-2|sk-mallory|sk-test-secret-42' '$FH_TMP/daemon.log' && ! curl -s '$FH/metrics' | grep -qE 'sk-|alice'"
stop_daemon
# ---- CORS (cors.allow_origins, off by default) -------------------------------------------------
cfg=$(make_config "$FH_TMP/cors")
printf 'cors: { allow_origins: ["https://app.example.com"] }\n' >>"$cfg"
start_daemon "$cfg"
curl -s -o /dev/null -D "$FH_TMP/headers" -w '%{http_code}' -X OPTIONS -H 'Origin: https://app.example.com' \
    -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: authorization, content-type' \
    "$FH/v1/chat/completions" >"$FH_TMP/status"
check "a preflight from an allowed origin: 204 with the CORS headers" \
    bash -c "[ \$(cat '$FH_TMP/status') = 204 ] && grep -qi '^access-control-allow-origin: https://app.example.com' '$FH_TMP/headers' && grep -qi '^access-control-allow-methods: .*POST' '$FH_TMP/headers' && grep -qi '^access-control-allow-headers: .*Authorization' '$FH_TMP/headers'"
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}' -H 'Origin: https://app.example.com'
check "its answers carry Access-Control-Allow-Origin and expose x-request-id" \
    bash -c "[ $STATUS = 200 ] && grep -qi '^access-control-allow-origin: https://app.example.com' '$FH_TMP/headers' && grep -qi '^access-control-expose-headers: x-request-id' '$FH_TMP/headers'"
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}' -H 'Origin: https://evil.example'
check "another origin gets none" bash -c "! grep -qi '^access-control-allow-origin' '$FH_TMP/headers'"
stop_daemon
post_plain=$(make_config "$FH_TMP/nocors")
start_daemon "$post_plain"
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"hi"}]}' -H 'Origin: https://app.example.com'
check "without cors.allow_origins: no CORS headers at all" bash -c "! grep -qi '^access-control-' '$FH_TMP/headers'"
stop_daemon
# An open gateway beyond loopback is refused; a bad keys file names its line.
cfg=$(make_config "$FH_TMP/o")
sed -i 's|^listen: .*|listen: "0.0.0.0:0"|' "$cfg"
run "listen 0.0.0.0 without auth.keys_file: check refuses it" 1 "$FH_BIN" check -c "$cfg"
expect "and says what to do" 'auth.keys_file, or auth.allow_anonymous: true'
printf 'auth: { allow_anonymous: true }\n' >>"$cfg"
run "with auth.allow_anonymous: true it is accepted" 0 "$FH_BIN" check -c "$cfg"
printf 'carol not-a-digest\n' >>"$keys"
cfg=$(make_config "$FH_TMP/b")
printf 'auth: { keys_file: "%s" }\n' "$keys" >>"$cfg"
run "a malformed keys file is refused" 1 "$FH_BIN" check -c "$cfg"
expect "naming its line" 'clients.keys:4: expected `NAME SHA256-HEX`'
finish
