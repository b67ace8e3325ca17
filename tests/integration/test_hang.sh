#!/usr/bin/env bash
# A plugin hook that never returns (SPEC 7, hooks.deadline_ms): its request
# gets the baseline within the deadline plus 500 ms (hook_timeout), the
# overlay is quarantined, and meanwhile the other overlay and the baseline
# are served as usual (p99 under 50 ms), /health answers and the watchdog
# keeps pinging. Once with apply() hung, once with evaluate().
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

DEADLINE_MS=1000
start_stub
start_notify_listener
notes=$FH_TMP/notify.log

echo '{"model":"m","messages":[{"role":"user","content":"refund twice"}],"fusion":{"scenario_type":"refund_processing","confidence":0.9}}' >"$FH_TMP/overlay.json"
echo '{"model":"m","messages":[{"role":"user","content":"hello"}]}' >"$FH_TMP/baseline.json"
trigger='{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"wedge"}}'

# hang HOOK: one daemon with the wedge overlay hanging in HOOK for ever.
hang() {
    local hook=$1 dir=$FH_TMP/$1
    local cfg
    FH_TEST_OVERLAYS_EXTRA=$(printf '  wedge:\n    config: { block_ms: -1, hook: "%s" }' "$hook")
    cfg=$(make_config "$dir")
    cp "$FH_TEST_PLUGIN_DIR/wedge.so" "$dir/plugins/"
    sed -i 's/^features:.*/features:\n  wedge:\n    description: "test overlay that hangs"\n    enabled_overlays: []\n    rollout_percentage: 100\n    conditions:\n      scenario_types: ["wedge"]/' \
        "$dir/overlay_feature_flags.yaml"
    printf 'workers: 2\nhooks: { deadline_ms: %d }\n' "$DEADLINE_MS" >>"$cfg"
    : >"$notes"
    NOTIFY_SOCKET=$FH_TMP/notify.sock WATCHDOG_USEC=400000 start_daemon "$cfg"
    wait_for 5 grep -q 'WATCHDOG=1' "$notes"

    # The hung request, and meanwhile the others.
    curl -s -o "$FH_TMP/hung.body" -D "$FH_TMP/hung.headers" -w '%{http_code} %{time_total}' \
        -H 'Content-Type: application/json' --data-binary "$trigger" --max-time 10 \
        "$FH/v1/chat/completions" >"$FH_TMP/hung.out" &
    local hung=$!
    check "$hook: the hook is hung" wait_for 5 grep -q "wedging $hook()" "$FH_TMP/daemon.log"
    local pings_before
    pings_before=$(grep -c WATCHDOG=1 "$notes")
    "$FH_TOOLS_DIR/fh-load" "$FH/v1/chat/completions" "$FH_TMP/overlay.json" 4 100000 0.8 \
        >"$FH_TMP/load_overlay.out" &
    local l1=$!
    "$FH_TOOLS_DIR/fh-load" "$FH/v1/chat/completions" "$FH_TMP/baseline.json" 4 100000 0.8 \
        >"$FH_TMP/load_baseline.out" &
    local l2=$!
    local health
    health=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 2 "$FH/health")
    local threads
    threads=$(ls "/proc/$FH_PID/task" | wc -l)
    wait $l1 $l2
    wait $hung
    local pings_during=$(($(grep -c WATCHDOG=1 "$notes") - pings_before))
    cat "$FH_TMP/load_overlay.out" "$FH_TMP/load_baseline.out"
    local code secs
    read -r code secs <"$FH_TMP/hung.out"
    STATUS=$code
    check "$hook: the hung request is answered 200 by the baseline ($code in ${secs}s)" [ "$code" = 200 ]
    check "$hook: within the deadline + 500 ms" awk -v s="$secs" -v d="$DEADLINE_MS" 'BEGIN{exit !(s * 1000 < d + 500)}'
    check "$hook: reason hook_timeout" grep -qi '^X-Fusion-Reason: hook_timeout' "$FH_TMP/hung.headers"
    check "$hook: X-Fusion-Overlay baseline" grep -qi '^X-Fusion-Overlay: baseline' "$FH_TMP/hung.headers"
    for kind in overlay baseline; do
        local line p99 failed done_
        line=$(cat "$FH_TMP/load_$kind.out")
        p99=$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$line")
        failed=$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' <<<"$line")
        done_=$(sed -n 's/^requests=\([0-9]*\).*/\1/p' <<<"$line")
        check "$hook: $kind requests during the hang all served ($done_, $failed failed)" \
            [ "${failed:-1}" = 0 -a "${done_:-0}" -gt 100 ]
        check "$hook: $kind p99 under 50 ms during the hang (${p99} ms)" \
            awk -v p="${p99:-999}" 'BEGIN{exit !(p < 50)}'
    done
    check "$hook: /health answers during the hang ($health)" bash -c "[ '${health% *}' = 200 ]"
    check "$hook: the watchdog kept pinging ($pings_during pings in the hang)" [ "$pings_during" -ge 3 ]
    check "$hook: at most 2 x workers + 8 threads ($threads)" [ "$threads" -le 12 ]
    check "$hook: the overlay is quarantined, saying why" \
        grep -q "overlay wedge quarantined: $hook() did not return within $DEADLINE_MS ms" "$FH_TMP/daemon.log"
    STATUS=$(curl -s -o "$FH_TMP/body" -w '%{http_code}' "$FH/health")
    check "$hook: /health says degraded" [ "$(jq -r .status "$FH_TMP/body")" = degraded ]
    post /v1/chat/completions "$trigger"
    check "$hook: the next request for it gets the baseline at once (quarantined)" \
        [ "$STATUS" = 200 -a "$(header X-Fusion-Reason)" = quarantined ]
    post /v1/chat/completions "$(cat "$FH_TMP/overlay.json")"
    check "$hook: the other overlay still applies" [ "$(header X-Fusion-Reason)" = applied ]
    stop_daemon
    check "$hook: SIGTERM with the hook still hung: exit 0 ($?)" [ $? = 0 ]
}

hang apply
hang evaluate
finish
