#!/usr/bin/env bash
# Breakers and budget gates (SPEC 7) with the stub's fault injection: the
# breaker opens after N refused overlaid requests while every client still
# gets 200 from the baseline, sends no overlaid call while open, recovers
# through half-open; the token-delta, spend and latency gates; the
# estimator against the upstream's usage; /health's reasons; the series cap
# under 5,000 scenario types. No client request fails because of an
# overlay: every answer below is a 200.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

start_stub
refund() { # refund [EXTRA JSON MEMBERS]
    echo "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Order 4411 was refunded twice.\"}],\"fusion\":{\"scenario_type\":\"refund_processing_duplicate\",\"confidence\":0.9}${1:+,$1}}"
}
overlaid_calls() { curl -s "$STUB/stub/requests" | jq '[.[] | select(.body.messages[0].role == "system")] | length'; }
health() { curl -s "$FH/health"; }
all_ok=true
expect_200() { [ "$STATUS" = 200 ] || { all_ok=false; echo "    unexpected status $STATUS: $(head -c 300 "$FH_TMP/body")"; }; }

# ---- the breaker ------------------------------------------------------------------
FH_TEST_BUDGET="{ hook_latency_ms: 60000, token_delta_warn_pct: 100000, token_delta_max_pct: 100000, consecutive_breaches: 1000 }"
FH_TEST_OVERLAYS_EXTRA=
cfg=$(make_config "$FH_TMP/a")
sed -i 's|^  refund_lot_switch: {|  refund_lot_switch: { breaker: { failure_threshold: 3, recovery_timeout_s: 2, half_open_max_calls: 1 },|' "$cfg"
start_daemon "$cfg"
for i in 1 2 3; do
    post /v1/chat/completions "$(refund '"stub":{"reject_if_system":1}')"
    expect_200
    check "refused overlaid request $i: the client gets the baseline (200, overlay_rejected_upstream)" \
        bash -c "[ $STATUS = 200 ] && [ '$(header X-Fusion-Reason)' = overlay_rejected_upstream ]"
done
check "the third failure opens the breaker (logged once)" \
    test "$(grep -c 'circuit breaker closed -> open' "$FH_TMP/daemon.log")" = 1
curl -s -X DELETE "$STUB/stub/requests" >/dev/null
for i in 1 2 3 4 5; do
    post /v1/chat/completions "$(refund)"
    expect_200
done
check "while open: baseline with reason breaker_open ($(header X-Fusion-Reason))" \
    bash -c "[ $STATUS = 200 ] && [ '$(header X-Fusion-Reason)' = breaker_open ] && [ '$(header X-Fusion-Overlay)' = baseline ]"
check "while open: not one overlaid call reached the upstream ($(overlaid_calls) of 5)" \
    test "$(overlaid_calls)" = 0
check "/health: degraded, reason breaker_open, the breaker's state shown" \
    bash -c "health | jq -e '.status == \"degraded\" and (.reasons | index(\"breaker_open:refund_lot_switch\")) and .gates.refund_lot_switch.breaker.state == \"open\" and .gates.refund_lot_switch.breaker.consecutive_failures == 3 and .gates.refund_lot_switch.breaker.last_failure_reason == \"overlay_rejected_upstream\"' >/dev/null"
health | jq -c '{status, reasons, breaker: .gates.refund_lot_switch.breaker}' >"$FH_TMP/degraded.json"
echo "    /health while degraded: $(cat "$FH_TMP/degraded.json")"
check "fusion_circuit_breaker_events_total counts the opening" \
    bash -c "curl -s '$FH/metrics' | grep -q '^fusion_circuit_breaker_events_total{overlay=\"refund_lot_switch\",result=\"open\"} 1'"
# Half-open after recovery_timeout_s (2 s): one probe; it fails, so it reopens.
half_open_probe() { post /v1/chat/completions "$(refund '"stub":{"reject_if_system":1}')"; [ "$(header X-Fusion-Reason)" = overlay_rejected_upstream ]; }
check "after recovery_timeout_s a probe goes through (half-open)" wait_for 5 half_open_probe
expect_200
check "the failed probe reopens the breaker" \
    bash -c "health | jq -e '.gates.refund_lot_switch.breaker.state == \"open\" and .gates.refund_lot_switch.breaker.trips == 2' >/dev/null"
applied_again() { post /v1/chat/completions "$(refund)"; [ "$(header X-Fusion-Reason)" = applied ]; }
check "a successful probe closes it: the overlay applies again" wait_for 5 applied_again
expect_200
check "/health ok again, breaker closed" \
    bash -c "health | jq -e '.status == \"ok\" and .gates.refund_lot_switch.breaker.state == \"closed\"' >/dev/null"
check "every transition logged once: open, half_open, open, half_open, closed" \
    bash -c "[ \$(grep -c 'circuit breaker .* -> ' '$FH_TMP/daemon.log') = 5 ]"
# A 4xx the caller's own request gets too (a bad key, a retired model, the
# caller's mistake) is not the overlay's failure: the breaker stays closed.
for i in 1 2 3 4; do
    post /v1/chat/completions "$(refund '"stub":{"status":400}')"
done
check "four 4xx answers the baseline got as well: relayed as they are ($STATUS)" [ "$STATUS" = 400 ]
post /v1/chat/completions "$(refund)"
expect_200
check "and they do not open the breaker: the overlay still applies" \
    bash -c "[ '$(header X-Fusion-Reason)' = applied ] && curl -s '$FH/health' | jq -e '.gates.refund_lot_switch.breaker.state == \"closed\"' >/dev/null"
stop_daemon

# With the environment's circuit_breaker_enabled: false, failures never open it.
cfg=$(make_config "$FH_TMP/b")
sed -i 's|^  refund_lot_switch: {|  refund_lot_switch: { breaker: { failure_threshold: 1 },|' "$cfg"
sed -i 's|^  production: .*|  production: { global_rollout_percentage: 100, circuit_breaker_enabled: false, quality_gate_threshold: 0.8 }|' "$(dirname "$cfg")/overlay_feature_flags.yaml"
start_daemon "$cfg"
for i in 1 2 3; do
    post /v1/chat/completions "$(refund '"stub":{"reject_if_system":1}')"
    expect_200
done
post /v1/chat/completions "$(refund)"
expect_200
check "circuit_breaker_enabled: false: three failures later the overlay still applies" \
    bash -c "[ '$(header X-Fusion-Reason)' = applied ]"
stop_daemon

# The flags file's global.circuit_breaker decides what overlays.<name>.breaker
# does not set: failure_threshold 2 there opens it at the second failure.
cfg=$(make_config "$FH_TMP/b2")
sed -i 's|^  circuit_breaker: .*|  circuit_breaker: { enabled: true, failure_threshold: 2, recovery_timeout: 300 }|' \
    "$(dirname "$cfg")/overlay_feature_flags.yaml"
start_daemon "$cfg"
for i in 1 2; do
    post /v1/chat/completions "$(refund '"stub":{"reject_if_system":1}')"
    expect_200
done
post /v1/chat/completions "$(refund)"
expect_200
check "global.circuit_breaker.failure_threshold 2 (not set per overlay): open after two failures" \
    bash -c "[ '$(header X-Fusion-Reason)' = breaker_open ] && curl -s '$FH/health' | jq -e '.gates.refund_lot_switch.breaker.failure_threshold == 2' >/dev/null"
stop_daemon

# ---- the token gate, the estimator, the latency and spend gates ------------------------
FH_TEST_BUDGET="{ hook_latency_ms: 60000 }" # the runbook's token budgets: warn 12 %, max 25 %
cfg=$(make_config "$FH_TMP/c")
sed -i 's|^  state_model_first: {.*|  state_model_first: { budget: { tokens_per_minute: 2500, token_delta_warn_pct: 100000, token_delta_max_pct: 100000 } }|' "$cfg"
start_daemon "$cfg"
post /v1/chat/completions "$(refund)"
expect_200
delta=$(jq -r .fusion.token_delta_pct "$FH_TMP/body")
check "the answer carries fusion.token_delta_pct ($delta %)" bash -c "[ '$delta' != null ]"
# While the reference warms up it is this request's own prompt without the
# overlay (estimated) plus its completion: recover the estimate from the
# figures and hold it against what the upstream reports for that prompt.
completion=$(jq .usage.completion_tokens "$FH_TMP/body")
total=$(jq .usage.total_tokens "$FH_TMP/body")
est=$(awk -v t="$total" -v d="$delta" -v c="$completion" 'BEGIN{printf "%d", t / (1 + d / 100) - c + 0.5}')
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"Order 4411 was refunded twice."}]}'
reported=$(jq .usage.prompt_tokens "$FH_TMP/body")
check "the prompt estimate ($est) is within 10% of the upstream's prompt_tokens ($reported)" \
    awk -v e="$est" -v r="$reported" 'BEGIN{exit !(e >= 0.9 * r && e <= 1.1 * r)}'
post /v1/chat/completions "$(refund)"
expect_200
check "a delta of $delta% over token_delta_max_pct 25% trips the gate: baseline, budget_tokens" \
    bash -c "[ $STATUS = 200 ] && [ '$(header X-Fusion-Reason)' = budget_tokens ]"
check "/health: degraded with budget_tripped and token_delta_critical" \
    bash -c "health | jq -e '(.reasons | index(\"budget_tripped:refund_lot_switch\")) and (.reasons | index(\"token_delta_critical:refund_lot_switch\")) and .gates.refund_lot_switch.gate.tripped' >/dev/null"
check "fusion_tokens_delta_pct recorded it" \
    bash -c "curl -s '$FH/metrics' | grep -q '^fusion_tokens_delta_pct_count{overlay=\"refund_lot_switch\"'"
# Spend: state_model_first may use 2500 tokens a minute; each call reserves
# its prompt estimate plus max_tokens (here 1000).
state='{"model":"m","max_tokens":1000,"messages":[{"role":"user","content":"Prepare the SOX audit of the approval workflow."}],"fusion":{"scenario_type":"regulatory_compliance_audit_prep","confidence":0.9}}'
reasons=
for i in 1 2 3; do
    post /v1/chat/completions "$state"
    expect_200
    reasons="$reasons $(header X-Fusion-Reason)"
done
check "tokens_per_minute 2500: two calls fit, the third gets the baseline with budget_rate ($reasons)" \
    bash -c "[ '$reasons' = ' applied applied budget_rate' ] || [ '$reasons' = ' applied budget_rate budget_rate' ]"
check "the spend is shown in /health" \
    bash -c "health | jq -e '.gates.state_model_first.gate.spend_this_minute > 0 and .gates.state_model_first.gate.tokens_per_minute == 2500' >/dev/null"
stop_daemon

# Hooks over budget.hook_latency_ms: the wedge test plugin's apply takes
# 30 ms against a 5 ms budget.
FH_TEST_BUDGET="{ hook_latency_ms: 60000, token_delta_warn_pct: 100000, token_delta_max_pct: 100000, consecutive_breaches: 1000 }"
FH_TEST_OVERLAYS_EXTRA='  wedge: { budget: { hook_latency_ms: 5 }, breaker: { failure_threshold: 2 }, config: { block_ms: 30, hook: "apply" } }'
cfg=$(make_config "$FH_TMP/d")
cp "$FH_TEST_PLUGIN_DIR/wedge.so" "$FH_TMP/d/plugins/"
sed -i 's/^features:.*/features:\n  wedge:\n    description: "a slow overlay"\n    enabled_overlays: []\n    rollout_percentage: 100\n    conditions:\n      scenario_types: ["wedge"]/' \
    "$FH_TMP/d/overlay_feature_flags.yaml"
start_daemon "$cfg"
slow='{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"wedge"}}'
post /v1/chat/completions "$slow"
expect_200
check "a hook over hook_latency_ms: the baseline serves it (budget_latency)" \
    bash -c "[ $STATUS = 200 ] && [ '$(header X-Fusion-Reason)' = budget_latency ]"
post /v1/chat/completions "$slow"
expect_200
post /v1/chat/completions "$slow"
expect_200
check "and it counts as a failure: two open the breaker (breaker_open)" \
    bash -c "[ '$(header X-Fusion-Reason)' = breaker_open ]"
stop_daemon

# Answers under quality_threshold are failures: the good_a test plugin
# scores every answer 0.1.
FH_TEST_OVERLAYS_EXTRA='  good_a: { breaker: { failure_threshold: 2 }, budget: { token_delta_warn_pct: 100000, token_delta_max_pct: 100000 } }'
cfg=$(make_config "$FH_TMP/q")
cp "$FH_TEST_PLUGIN_DIR/good_a.so" "$FH_TMP/q/plugins/"
sed -i 's/^features:.*/features:\n  good_a:\n    description: "scores low"\n    enabled_overlays: []\n    rollout_percentage: 100\n    conditions:\n      scenario_types: ["quality_probe"]/' \
    "$FH_TMP/q/overlay_feature_flags.yaml"
start_daemon "$cfg"
low='{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"quality_probe"}}'
post /v1/chat/completions "$low"
expect_200
check "an overlaid answer scoring 0.1 is served (applied, quality_score 0.1)" \
    bash -c "[ '$(header X-Fusion-Reason)' = applied ] && jq -e '.fusion.quality_score == 0.1' '$FH_TMP/body' >/dev/null"
post /v1/chat/completions "$low"
expect_200
post /v1/chat/completions "$low"
expect_200
check "two answers under quality_threshold 0.8 open the breaker (quality)" \
    bash -c "[ '$(header X-Fusion-Reason)' = breaker_open ] && curl -s '$FH/health' | jq -e '.gates.good_a.breaker.last_failure_reason == \"quality\"' >/dev/null"
stop_daemon
FH_TEST_OVERLAYS_EXTRA=

# ---- metrics under 5,000 scenario types -------------------------------------------------
cfg=$(make_config "$FH_TMP/e")
sed -i 's|^metrics: .*||' "$cfg"
printf 'metrics: { max_series_per_metric: 50 }\n' >>"$cfg"
start_daemon "$cfg"
python3 - "${FH##*:}" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
for i in range(5000):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "fusion": {"scenario_type": f"type_{i}"}})
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"request {i}: {r.status}")
PY
check "5,000 requests with distinct scenario types: all 200" [ $? = 0 ]
curl -s "$FH/metrics" >"$FH_TMP/metrics"
most=$(grep -v '^#' "$FH_TMP/metrics" | grep '^fusion_requests_total{' | wc -l)
check "fusion_requests_total keeps to the cap ($most series, cap 50 + the fold)" [ "$most" -le 51 ]
check "the rest folded into scenario=\"__other__\"" grep -q 'scenario="__other__"' "$FH_TMP/metrics"
dropped=$(sed -n 's/^fusion_metrics_dropped_total //p' "$FH_TMP/metrics")
check "and counted in fusion_metrics_dropped_total ($dropped)" awk -v d="$dropped" 'BEGIN{exit !(d > 0)}'
stop_daemon

check "no client request failed because of an overlay (every answer above was a 200)" $all_ok
finish
