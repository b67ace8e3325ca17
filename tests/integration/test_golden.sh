#!/usr/bin/env bash
# fusion-host golden and bench (SPEC 9, issue 11), run the way an operator
# does: from a source tree (a copy of config/ and tests/golden/, its
# build/plugins the build's), against the bundled stub model.
# - validate passes on the recorded golden files; --critical-only runs the
#   three critical ones; an unknown scenario is exit 2;
# - validate fails (exit 1, a readable diff) when a directive text, a
#   sampling parameter or a routing rule changes, and reports the changed
#   config hash; update records the change and validate passes again;
# - bench writes a report of the documented shape, which budget and compare
#   read (their own formats are test_report's).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

src=$FH_TMP/src
mkdir -p "$src/tests" "$src/build"
cp -r "$FH_SOURCE_DIR/config" "$src/"
cp -r "$FH_SOURCE_DIR/tests/golden" "$src/tests/"
ln -s "$FH_PLUGIN_DIR" "$src/build/plugins"
cd "$src" || exit 1
golden() { "$FH_BIN" golden "$@"; }

# ---- the recorded files hold ----------------------------------------------------------
run "validate --all on the recorded golden files" 0 golden validate --all
expect "... every scenario checked, none regressed" 'golden validate: 10 scenario\(s\), 0 regressed'
expect "... a critical scenario is named as such" '^---- refund_processing_duplicate \(critical\)'
run "validate --critical-only" 0 golden validate --critical-only
expect "... the three critical scenarios" 'golden validate: 3 scenario\(s\), 0 regressed'
run "validate --scenario ID" 0 golden validate --scenario lot_switch_recall_reallocation
expect "... that one" 'golden validate: 1 scenario\(s\), 0 regressed'
run "an unknown scenario: exit 2" 2 golden validate --scenario no_such_scenario
expect "... named" "unknown scenario 'no_such_scenario'"
run "update without a scenario: exit 2" 2 golden update
run "no subcommand: exit 2" 2 golden

# ---- a directive text changes ------------------------------------------------------------
sed -i 's/a reversing ledger entry/a reversal ledger entry/' config/micro_overlays/rollback_first.md
run "a changed directive text: validate fails" 1 golden validate --scenario refund_processing_duplicate
expect "... the golden line, removed" '^  -messages\[0\]\.content \| .*a reversing ledger entry'
expect "... the new line, added" '^  \+messages\[0\]\.content \| .*a reversal ledger entry'
expect "... the changed configuration is reported" 'configuration changed since 1 golden file'
expect "... named as a regression" 'FAIL refund_processing_duplicate'
run "update records it" 0 golden update --scenario refund_processing_duplicate
run "validate passes again" 0 golden validate --scenario refund_processing_duplicate
cp "$FH_SOURCE_DIR/config/micro_overlays/rollback_first.md" config/micro_overlays/
cp "$FH_SOURCE_DIR/tests/golden/refund_processing_duplicate_golden.json" tests/golden/

# ---- a sampling parameter changes ------------------------------------------------------
sed -i '/^  refund_lot_switch:/,/config:/ s/config: {}/config: { temperature: 0.9 }/' \
    config/fusion-host.dev.yaml
grep -q 'temperature: 0.9' config/fusion-host.dev.yaml || echo "# (the sed did not apply)"
run "a changed sampling parameter: validate fails" 1 golden validate --scenario refund_processing_duplicate
expect "... the temperature line" '^  -temperature: 0\.22'
# (0.9 asked; the overlay holds temperature to its ceiling for the scenario)
expect "... and the new value" '^  \+temperature: 0\.4'
cp "$FH_SOURCE_DIR/config/fusion-host.dev.yaml" config/

# ---- a routing rule changes ------------------------------------------------------------
sed -i 's/confidence_threshold: 0.7$/confidence_threshold: 0.95/' config/overlay_feature_flags.yaml
run "a changed routing rule: validate fails" 1 golden validate --scenario lot_switch_recall_reallocation
expect "... the decision changed" '^  -decision: "overlay"'
expect "... to the baseline" '^  \+reason: "no_match"'
expect "... against what scenarios.yaml expects" 'routed to the baseline, but scenarios.yaml expects refund_lot_switch'
run "... and update refuses to record it" 1 golden update --scenario lot_switch_recall_reallocation
expect "... saying why" 'not recorded'
cp "$FH_SOURCE_DIR/config/overlay_feature_flags.yaml" config/
run "restored: validate passes" 0 golden validate --all

# ---- another upstream: routing and scores still compared ----------------------------------
start_stub
run "validate --upstream URL (the stub, started apart)" 0 golden validate --all --upstream "$STUB/v1"
expect "... says the rewritten request cannot be seen there" 'cannot be seen'
expect "... and still checks every scenario" 'golden validate: 10 scenario\(s\), 0 regressed'

# ---- a missing golden file ---------------------------------------------------------------
rm tests/golden/webhook_failure_cascade_orders_golden.json
run "a scenario without its golden file fails" 1 golden validate --scenario webhook_failure_cascade_orders
expect "... saying how to record it" 'golden update --scenario webhook_failure_cascade_orders'

# ---- bench ------------------------------------------------------------------------------------
run "bench without --output: exit 2" 2 "$FH_BIN" bench --iterations 2
run "bench with a bad --iterations: exit 2" 2 "$FH_BIN" bench --iterations 0 --output r.json
run "bench --iterations 2" 0 "$FH_BIN" bench --iterations 2 --output "$FH_TMP/r.json"
expect "... writes the report" "written to $FH_TMP/r.json"
check "the report has the documented shape" jq -e '
    .format == 1 and .iterations == 2 and (.scenarios | length) == 10 and
    (.config_hash | length) == 64 and .baseline_mode == false and
    all(.scenarios[]; .overlay.runs == 2 and .baseline.runs == 2 and
        (.overlay.latency_ms.p95 >= .overlay.latency_ms.p50)) and
    .overall.runs == 40 and .overall.failed == 0' "$FH_TMP/r.json"
check "overlaid scenarios: the overlay served them, disabled for the baseline pass" jq -e '
    [.scenarios[] | select(.expected_overlay != "baseline")] |
    all(.overlay.name == .expected_overlay and .overlay.reasons.applied == 2 and
        .baseline.reasons.disabled == 2 and (.token_delta_pct | type) == "number" and
        (.overlay.rules | length) > 0 and .overlay.quality.mean >= 0)' "$FH_TMP/r.json"
check "scenarios no overlay takes: no overlay, no delta" jq -e '
    [.scenarios[] | select(.expected_overlay == "baseline")] |
    all(.overlay.name == null and .token_delta_pct == null)' "$FH_TMP/r.json"
run "bench --baseline-mode" 0 "$FH_BIN" bench --iterations 1 --baseline-mode --output "$FH_TMP/b.json"
check "... marks the report" jq -e '.baseline_mode == true' "$FH_TMP/b.json"
# With the stub, overlaid answers are several times longer: a critical
# token delta, which budget must call critical.
run "budget on the report: the stub's token delta is critical (exit 1)" 1 \
    "$FH_BIN" budget --report-file "$FH_TMP/r.json"
expect "... a markdown table naming a scenario" 'refund_processing_duplicate'
run "compare two runs of the same build: exit 0" 0 \
    "$FH_BIN" compare --baseline "$FH_TMP/b.json" --current "$FH_TMP/r.json"
finish
