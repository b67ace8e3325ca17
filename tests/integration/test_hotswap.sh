#!/usr/bin/env bash
# Hot swaps under load (issue 10): while 8 clients keep sending requests
# routed to good_a, the test renames good_a.so 1.0.0 / 2.0.0 alternately
# over plugins/good_a.so in the watched folder, 100 times, each time waiting
# until the admin API reports the new version. No request may fail or fall
# back to the baseline; afterwards the old generations are all finalised,
# no private copies are left in the plugin cache or mapped, and the fds and
# RSS have not grown. Prints how long a swap takes to show.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

SWAPS=${FH_TEST_SWAPS:-100}
CLIENTS=8
# An open loop for all clients together, so the load (and the test's time
# under the sanitizers) is bounded; the swaps compete with it for 2 cores.
RATE=${FH_TEST_SWAP_RATE:-600}

start_stub
FH_TEST_OVERLAYS_EXTRA='  good_a: { budget: { hook_latency_ms: 60000, token_delta_warn_pct: 100000, token_delta_max_pct: 100000, consecutive_breaches: 1000 }, quality_threshold: 0 }'
cfg=$(make_config "$FH_TMP/d")
dir=$(dirname "$cfg")
SOCK=$dir/state/admin.sock
sed -i 's/^  watch: false/  watch: true/' "$cfg"
cp "$FH_TEST_PLUGIN_DIR/good_a.so" "$dir/plugins/good_a.so"
sed -i 's/^features:.*/features:\n  good_a:\n    description: "hot swap test"\n    enabled_overlays: []\n    rollout_percentage: 100\n    conditions:\n      scenario_types: ["swap"]/' \
    "$dir/overlay_feature_flags.yaml"
echo '{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"swap"}}' >"$FH_TMP/swap.json"
FH_TEST_MEASURES_MEMORY=1 start_daemon "$cfg"

now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
admin_good_a() { curl -s --max-time 5 --unix-socket "$SOCK" http://admin/admin/overlays/good_a; }
fds() { ls "/proc/$FH_PID/fd" | wc -l; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$FH_PID/status"; }
# good_a's files in the plugin cache, and its distinct mappings.
cached() { find "$dir/state/plugin-cache" -name 'good_a*' | wc -l; }
mapped() { awk '$6 ~ /good_a/ {print $6}' "/proc/$FH_PID/maps" | sort -u | wc -l; }
drained() {
    admin_good_a | jq -e '.draining_generations == 0 and .in_flight == 0 and .pinned_generations == 0' >/dev/null
}
settled() {
    admin_good_a | jq -e '.draining_generations == 0 and .in_flight == 0' >/dev/null &&
        [ "$(cached)" -le 1 ] && [ "$(mapped)" -le 1 ]
}
# median and max of the numbers in FILE (ms, one a line).
stats() { sort -n "$1" | awk '{v[NR] = $1} END {printf "median %.0f ms, max %.0f ms", v[int((NR + 1) / 2)], v[NR]}'; }

post /v1/chat/completions "$(cat "$FH_TMP/swap.json")"
check "good_a 1.0.0 serves the swap scenario ($STATUS, $(header X-Fusion-Overlay), $(header X-Fusion-Reason))" \
    [ "$STATUS" = 200 -a "$(header X-Fusion-Overlay)" = good_a/1.0.0 -a "$(header X-Fusion-Reason)" = applied ]
# Warm up (connections, allocator), then the figures to compare with.
"$FH_TOOLS_DIR/fh-load" "$FH/v1/chat/completions" "$FH_TMP/swap.json" $CLIENTS 400 20 >/dev/null
wait_for 10 bash -c "[ \$(curl -s --unix-socket '$SOCK' http://admin/admin/overlays/good_a | jq .in_flight) = 0 ]"
fds0=$(fds) rss0=$(rss_kb)
applied0=$(admin_good_a | jq .requests.applied)

# The clients: fh-load rounds until told to stop.
: >"$FH_TMP/load.out"
(
    while [ ! -e "$FH_TMP/stop" ]; do
        FH_LOAD_RATE=$RATE "$FH_TOOLS_DIR/fh-load" "$FH/v1/chat/completions" "$FH_TMP/swap.json" \
            $CLIENTS $((RATE / 2)) 30 >>"$FH_TMP/load.out"
    done
) &
LOAD=$!
trap 'touch "$FH_TMP/stop"; kill $LOAD 2>/dev/null; cleanup_daemons' EXIT
wait_for 10 test -s "$FH_TMP/load.out" # one round done: the clients are running

# The swaps. After each rename, one request and one admin read a round
# until the request is served by the new version and the admin API says it.
files=(good_a.so good_a_v2.so)
versions=(1.0.0 2.0.0)
: >"$FH_TMP/seen.ms"
: >"$FH_TMP/served.ms"
observed=0 probe_failed=0
t_start=$SECONDS
for ((i = 1; i <= SWAPS; i++)); do
    want=${versions[i % 2]}
    cp "$FH_TEST_PLUGIN_DIR/${files[i % 2]}" "$dir/plugins/.good_a.so.tmp"
    t0=$(now_us)
    mv "$dir/plugins/.good_a.so.tmp" "$dir/plugins/good_a.so"
    seen='' served=''
    deadline=$((SECONDS + 20))
    while [ -z "$seen" ] || [ -z "$served" ]; do
        if [ -z "$served" ]; then
            code=$(curl -s -o /dev/null -D "$FH_TMP/probe.headers" -w '%{http_code}' --max-time 10 \
                -H 'Content-Type: application/json' --data-binary @"$FH_TMP/swap.json" \
                "$FH/v1/chat/completions")
            [ "$code" = 200 ] || probe_failed=$((probe_failed + 1))
            grep -qi "^X-Fusion-Overlay: good_a/$want" "$FH_TMP/probe.headers" &&
                served=$((($(now_us) - t0) / 1000))
        fi
        if [ -z "$seen" ] && admin_good_a | grep -q "\"version\":\"$want\""; then
            seen=$((($(now_us) - t0) / 1000))
        fi
        [ $SECONDS -ge $deadline ] && break
        [ -z "$seen" ] || [ -z "$served" ] && sleep 0.01
    done
    if [ -n "$seen" ]; then
        observed=$((observed + 1))
        echo "$seen" >>"$FH_TMP/seen.ms"
    else
        echo "swap $i: the admin API did not report $want within 20 s"
    fi
    [ -n "$served" ] && echo "$served" >>"$FH_TMP/served.ms"
done
swap_s=$((SECONDS - t_start))
touch "$FH_TMP/stop"
wait $LOAD

# What the clients saw.
read -r requests failed transport < <(awk '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] += kv[2] }
} END { print v["requests"] + 0, v["failed"] + 0, v["transport_errors"] + 0 }' "$FH_TMP/load.out")
echo "# swaps: $observed of $SWAPS seen in ${swap_s}s; $requests requests during them" \
    "($(wc -l <"$FH_TMP/load.out") fh-load rounds at $RATE/s), $failed failed" \
    "($transport transport errors), $probe_failed probes failed"
echo "# rename -> admin API reports the new version: $(stats "$FH_TMP/seen.ms")"
echo "# rename -> first request served by the new version: $(stats "$FH_TMP/served.ms")" \
    "($(wc -l <"$FH_TMP/served.ms") swaps)"
check "$SWAPS swaps, each reported by the admin API ($observed)" [ "$observed" = "$SWAPS" ]
check "the daemon logged $SWAPS swaps ($(grep -c 'overlay good_a: swapped' "$FH_TMP/daemon.log"))" \
    [ "$(grep -c 'overlay good_a: swapped' "$FH_TMP/daemon.log")" = "$SWAPS" ]
check "the clients sent requests throughout ($requests)" [ "$requests" -ge $((swap_s * RATE / 10)) ]
check "no request failed ($failed failed, $transport transport errors, $probe_failed probes)" \
    [ "$failed" = 0 -a "$transport" = 0 -a "$probe_failed" = 0 ]
applied=$(($(admin_good_a | jq .requests.applied) - applied0))
baseline=$(admin_good_a | jq .requests.baseline)
check "every request was overlaid by one generation or the other ($applied applied, $baseline baseline)" \
    [ "$baseline" = 0 -a "$applied" -ge "$requests" ]

# Once the load stops, the old generations finish and leave nothing behind.
wait_for 30 settled
state=$(admin_good_a | jq -c '{version, state, in_flight, draining_generations, pinned_generations}')
check "the old generations are drained: $state" drained
check "every old generation was finalised ($(grep -c 'init good_a' "$FH_TMP/daemon.log") init, $(grep -c 'fini good_a' "$FH_TMP/daemon.log") fini)" \
    [ "$(grep -c 'init good_a' "$FH_TMP/daemon.log")" = $((SWAPS + 1)) -a \
        "$(grep -c 'fini good_a' "$FH_TMP/daemon.log")" = "$SWAPS" ]
check "no hook ran on a finalised generation" bash -c "! grep -q 'bad fini' '$FH_TMP/daemon.log'"
check "the plugin cache holds at most 2 copies of good_a ($(cached): $(ls "$dir/state/plugin-cache" | tr '\n' ' '))" \
    [ "$(cached)" -le 2 ]
check "at most 2 copies of good_a mapped ($(mapped))" [ "$(mapped)" -le 2 ]
wait_for 10 bash -c "[ \$(ls /proc/$FH_PID/fd | wc -l) -le $((fds0 + 4)) ]"
fds1=$(fds) rss1=$(rss_kb)
growth=$(awk -v a="$rss0" -v b="$rss1" 'BEGIN {printf "%+.1f", (b - a) / 1024}')
echo "# fds: $fds0 before, $fds1 after; RSS: $((rss0 / 1024)) MB before, $((rss1 / 1024)) MB after ($growth MB)"
check "open fds did not grow ($fds0 -> $fds1)" [ "$fds1" -le $((fds0 + 4)) ]
check "RSS grew by less than 20 MB ($growth MB)" [ $((rss1 - rss0)) -lt 20480 ]
post /v1/chat/completions "$(cat "$FH_TMP/swap.json")"
check "the last version serves ($STATUS, $(header X-Fusion-Overlay))" \
    [ "$STATUS" = 200 -a "$(header X-Fusion-Overlay)" = "good_a/${versions[SWAPS % 2]}" ]
stop_daemon
check "SIGTERM: exit 0 ($?)" [ $? = 0 ]
finish
