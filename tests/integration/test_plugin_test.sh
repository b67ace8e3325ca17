#!/usr/bin/env bash
# plugin-test as an overlay author's bench: the contract checks, --config
# (the overlay's own config, JSON or YAML), --stress (hook time percentiles,
# results compared across threads, a data race caught), --json for CI, and a
# plugin that crashes or hangs reported without the bench dying.
. "$(dirname "$0")/lib.sh"

TP=$FH_TEST_PLUGIN_DIR
SHIPPED=$FH_PLUGIN_DIR/refund_lot_switch.so
cfg=$(config_copy)
cd "$FH_SOURCE_DIR" || exit 1
pt() { "$FH_BIN" plugin-test "$@"; }
# jq FILTER on the last output: true or not.
jq_ok() {
    if jq -e "$2" "$FH_TMP/out" >/dev/null 2>&1; then
        ok "$1"
    else
        not_ok "$1: jq '$2' is not true; output:"
        sed 's/^/    /' "$FH_TMP/out"
    fi
}
# The exit code alone, the output unread (plugin log lines go to stderr).
run_json() {
    local name=$1 want=$2
    shift 2
    "$@" >"$FH_TMP/out" 2>"$FH_TMP/err"
    local got=$?
    if [ "$got" -eq "$want" ]; then ok "$name (exit $got)"; else
        not_ok "$name: exit $got, wanted $want"
        sed 's/^/    /' "$FH_TMP/out" "$FH_TMP/err"
    fi
}
table='(match\(\)|apply\(\)|evaluate\(\)) +[0-9]+( +[0-9]+\.[0-9]){4}'

# ---- the shipped overlay: clean under stress --------------------------------
run "shipped overlay --stress 2000" 0 pt "$SHIPPED" -c "$cfg" --stress 2000
expect "still prints the first run" '"temperature": 0\.22'
expect "contract ok" '^contract: +ok'
expect "2000 runs on 4 threads" '^stress: +2000 runs on 4 threads'
expect "percentiles header" 'hook +calls +p50 us +p95 us +p99 us +max us'
expect "a percentile row per hook" "^  $table"
if grep -q 'nondeterministic' "$FH_TMP/out"; then not_ok "shipped overlay: a difference reported"; else
    ok "shipped overlay: no difference"; fi
expect "verdict ok" '^result: +ok'

run_json "shipped overlay --stress 300 --json" 0 pt "$SHIPPED" -c "$cfg" --stress 300 --threads 3 --json
jq_ok "json: ok, 300 runs on 3 threads, none differ" \
    '.ok == true and .stress.completed == 300 and .stress.threads == 3 and .stress.differences == [] and .stress.violations == []'
jq_ok "json: percentiles per hook" \
    '[.stress.hooks.match, .stress.hooks.apply, .stress.hooks.evaluate] | all(.calls == 300 and .p50_us <= .p95_us and .p95_us <= .p99_us and .p99_us <= .max_us)'
jq_ok "json: the first run's report" \
    '.overlay == "refund_lot_switch" and .abi.major == 1 and .match_score > 0 and .request.temperature == 0.22 and (.evaluation.rules | length) > 0 and .violations == [] and .crash == null and .timeout == null'

# ---- racy: well-formed alone, caught under stress -----------------------------
run "racy.so alone passes" 0 pt "$TP/racy.so" -c "$cfg"
expect "racy: contract ok" '^contract: +ok'
expect "racy: its directive" 'Racy overlay directive\. 1\. Check the lot before you touch it\. 2\. Reverse'
run "racy.so on one thread passes" 0 pt "$TP/racy.so" -c "$cfg" --stress 200 --threads 1
if [[ ",${FH_SANITIZE:-}," == *thread* ]]; then
    skip "racy.so --stress under TSan (TSan reports the race itself)"
else
    run "racy.so --stress 2000 fails" 1 pt "$TP/racy.so" -c "$cfg" --stress 2000
    expect "names the differing field" \
        '^nondeterministic result: request \(rewritten by apply\) differs from the first run.s in [0-9]+ of 2000 runs'
    expect "shows both texts" '^    this run: '
    expect "percentiles still printed" "^  $table"
    expect "verdict" '^result: +FAILED: .*nondeterministic result'
    run_json "racy.so --stress --json" 1 pt "$TP/racy.so" -c "$cfg" --stress 1000 --json
    jq_ok "json: the request differs, counted" \
        '.ok == false and (.stress.differences | map(.field) | index("request")) != null and (.stress.differences[0].runs > 0) and (.stress.differences[0].threads | length) >= 1'
fi

# ---- contract violations -------------------------------------------------------
run "bad_contract.so without config keeps the contract" 0 pt "$TP/bad_contract.so" -c "$cfg"
printf '{"violate": ["quality", "rule_name"]}\n' >"$FH_TMP/v.json"
run "--config JSON: quality and rule name" 1 pt "$TP/bad_contract.so" -c "$cfg" --config "$FH_TMP/v.json"
expect "the config init() got" 'overlay config: .*v\.json.*"violate"'
expect "quality outside [0,1]" 'quality to 1\.5: it must be in \[0,1\]'
expect "rule name not [a-z0-9_]" 'named "Not-Snake"'
printf 'violate:\n  - match\n  - apply\n  - rule_score\n  - evaluate\n' >"$FH_TMP/v.yaml"
run "--config YAML: match, apply, evaluate, rule score" 1 pt "$TP/bad_contract.so" -c "$cfg" \
    --config="$FH_TMP/v.yaml"
expect "match outside [0,1]" 'match\(\) returned 1\.5'
expect "apply non-zero" 'apply\(\) returned -2'
expect "evaluate non-zero" 'evaluate\(\) returned 7'
expect "rule score outside [0,1]" 'rule negative scored -0\.25'
run_json "violations in --json and under --stress" 1 pt "$TP/bad_contract.so" -c "$cfg" \
    --config "$FH_TMP/v.yaml" --stress 50 --json
jq_ok "json: 4 violations, each seen in all 50 stress runs" \
    '(.violations | length) == 4 and (.stress.violations | length) == 4 and (.stress.violations | all(.runs == 50)) and .ok == false'
printf 'violate: [rule_count]\n' >"$FH_TMP/count.yaml"
run "too many rules" 1 pt "$TP/bad_contract.so" -c "$cfg" --config "$FH_TMP/count.yaml"
expect "rule_count past the limit" 'rule_count to 17'
printf 'violate: [unclosed\n' >"$FH_TMP/broken.yaml"
run "an unreadable --config is refused" 1 pt "$TP/bad_contract.so" -c "$cfg" --config "$FH_TMP/broken.yaml"
expect "names the file" 'broken\.yaml'
run "a hook missing: refused at load" 1 pt "$TP/bad_hook.so" -c "$cfg"
expect "says which hook" 'required hook\(s\) missing: evaluate'
run_json "a hook missing --json" 1 pt "$TP/bad_hook.so" -c "$cfg" --json
jq_ok "json: load_error" '.ok == false and (.load_error | test("evaluate"))'

# ---- a crash and a hang: reported, the bench survives ----------------------------
cat >"$FH_TMP/crash.json" <<'JSON'
{"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}],
  "fusion": {"scenario_type": "crash"}}, "answer": "x"}
JSON
run "crasher.so --stress: a crash is a finding, not the end" 1 pt "$TP/crasher.so" -c "$cfg" \
    --scenario "$FH_TMP/crash.json" --stress 100
# A sanitizer build instruments the plugin too: depending on the compiler,
# UBSan stops the null store before the signal (exit status 1) or the
# SIGSEGV comes through; either way the bench names the hook.
if [ -z "${FH_SANITIZE:-}" ]; then
    expect "names the signal and the hook" \
        '^crash: +the plugin crashed the test process with SIGSEGV in apply\(\)'
    signal='.crash.signal_name == "SIGSEGV"'
else
    expect "names the hook (sanitizer build)" \
        '^crash: +the (plugin crashed the test process with SIGSEGV|test process ended .*) in apply\(\)'
    signal='(.crash.kind == "exit" or .crash.signal_name == "SIGSEGV")'
fi
expect "the bench's verdict" '^result: +FAILED: the plugin crashed'
run_json "crasher.so --json" 1 pt "$TP/crasher.so" -c "$cfg" --scenario "$FH_TMP/crash.json" --stress 100 --json
jq_ok "json: the crash, where and how" \
    "$signal"' and (.crash.where | test("apply")) and .ok == false and .overlay == "crasher"'
sed 's/"crash"}/"crash_stack"}/' "$FH_TMP/crash.json" >"$FH_TMP/stack.json"
run "a stack overflow too" 1 pt "$TP/crasher.so" -c "$cfg" --scenario "$FH_TMP/stack.json"
expect "SIGSEGV in apply()" 'with SIGSEGV in apply\(\)'

wcfg=$(config_copy)
printf '\nhooks:\n  deadline_ms: 200\n' >>"$wcfg"
cat >"$FH_TMP/wedge.json" <<'JSON'
{"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}],
  "fusion": {"scenario_type": "wedge"}}, "answer": "x"}
JSON
printf '{"block_ms": 3000}\n' >"$FH_TMP/block.json"
t0=$(date +%s%N)
run "a hook past hooks.deadline_ms" 1 pt "$TP/wedge.so" -c "$wcfg" --config "$FH_TMP/block.json" \
    --scenario "$FH_TMP/wedge.json" --stress 10
ms=$((($(date +%s%N) - t0) / 1000000))
expect "names the hook and the deadline" '^deadline: +apply\(\) did not return within 200 ms'
if [ "$ms" -lt 2500 ]; then ok "stopped at the deadline, not after the hook ($ms ms)"; else
    not_ok "took $ms ms: the bench waited for the hook"; fi

# ---- options ------------------------------------------------------------------------
run "-c before the command word still means the daemon config" 0 "$FH_BIN" --config "$cfg" \
    plugin-test "$TP/racy.so"
expect "that config" "config: +$cfg"
run "--stress 0 is a usage error" 2 pt "$SHIPPED" --stress 0
run "--stress abc is a usage error" 2 pt "$SHIPPED" --stress abc
run "--threads without --stress is a usage error" 2 pt "$SHIPPED" --threads 2
run "--threads 65 is a usage error" 2 pt "$SHIPPED" --stress 10 --threads 65
run "--help shows --stress" 0 "$FH_BIN" --help
expect "and --config" 'plugin-test PATH .*--config FILE'

finish
