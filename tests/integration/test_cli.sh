#!/usr/bin/env bash
# The offline commands as an operator and an overlay author use them:
# --version/--help, check, flags validate, plugin-test.
. "$(dirname "$0")/lib.sh"

run "--version" 0 "$FH_BIN" --version
expect "--version names the ABI" '^fusion-host [0-9]+\.[0-9]+\.[0-9]+ \(overlay ABI 1\.[0-9]+\)$'
run "--help" 0 "$FH_BIN" --help
expect "--help lists check" 'check \[-c FILE\]'
run "unknown command is a usage error" 2 "$FH_BIN" frobnicate
run "no command is a usage error" 2 "$FH_BIN"

cfg=$(config_copy)
run "check on the dev config" 0 "$FH_BIN" check -c "$cfg"
expect "check says ok with both plugins" 'ok \(2 features, 2 plugins loaded\)'
if [ "${FH_BINARY_DIR:-}" = "$FH_SOURCE_DIR/build" ]; then
    run "check -c config/fusion-host.dev.yaml in the tree" 0 \
        "$FH_BIN" check -c "$FH_SOURCE_DIR/config/fusion-host.dev.yaml"
fi
run "check of a missing config" 1 "$FH_BIN" check -c "$FH_TMP/nope.yaml"
expect "names the missing file" 'nope\.yaml'

# A flags file with rollout_percentage: 150 names the file, line and key.
cfg=$(config_copy)
flags=$(dirname "$cfg")/overlay_feature_flags.yaml
sed -i -E '0,/rollout_percentage:/s/rollout_percentage:[[:space:]]*[0-9]+/rollout_percentage: 150/' "$flags"
line=$(grep -n 'rollout_percentage: 150' "$flags" | cut -d: -f1)
run "check refuses rollout_percentage: 150" 1 "$FH_BIN" check -c "$cfg"
expect "names the flags file, line and key" \
    "overlay_feature_flags\.yaml:$line:[0-9]+: features\.[a-z_]+\.rollout_percentage"
run "flags validate refuses it too" 1 "$FH_BIN" flags validate -c "$cfg"
expect "flags validate names the key" "overlay_feature_flags\.yaml:$line:[0-9]+: features\.[a-z_]+\.rollout_percentage"

# A .so without the entry symbol in the plugin folder.
cfg=$(config_copy)
cp "$FH_TEST_PLUGIN_DIR/bad_no_entry.so" "$(dirname "$cfg")/plugins/"
run "check refuses a plugin without the entry symbol" 1 "$FH_BIN" check -c "$cfg"
expect "names the file" 'plugins/bad_no_entry\.so.*fusion_overlay_entry'

# A text file named .so.
cfg=$(config_copy)
echo "not a library" >"$(dirname "$cfg")/plugins/notes.so"
run "check refuses a non-ELF .so" 1 "$FH_BIN" check -c "$cfg"
expect "names the non-ELF file" 'plugins/notes\.so'

# A group-writable plugin.
cfg=$(config_copy)
chmod g+w "$(dirname "$cfg")/plugins/refund_lot_switch.so"
run "check refuses a group-writable plugin" 1 "$FH_BIN" check -c "$cfg"
expect "says why" 'refund_lot_switch\.so.*writable'

# A directive text the flags name but that is missing.
cfg=$(config_copy)
rm "$(dirname "$cfg")/micro_overlays/rollback_first.md"
run "check refuses a missing micro-overlay text" 1 "$FH_BIN" check -c "$cfg"
expect "names the text" 'rollback_first\.md'

# RESON_FEATURES naming something that is not a feature.
cfg=$(config_copy)
RESON_FEATURES="refund_lot_switch,no_such_feature" run "check reports unknown RESON_FEATURES names" 1 \
    "$FH_BIN" check -c "$cfg"
expect "names it" 'no_such_feature'
RESON_FEATURES="" run "RESON_FEATURES empty is valid" 0 "$FH_BIN" check -c "$cfg"

run "flags validate -f emergency_baseline.yaml" 0 \
    "$FH_BIN" flags validate -f "$FH_SOURCE_DIR/config/emergency_baseline.yaml"
run "flags validate -c dev config" 0 "$FH_BIN" flags validate -c "$cfg"

# plugin-test: the rollback directive ahead of the caller's messages and the
# scenario's parameters (refund_processing_duplicate: 0.22 / 0.75 / 0.40).
cd "$FH_SOURCE_DIR" || exit 1
run "plugin-test refund_lot_switch" 0 "$FH_BIN" plugin-test "$FH_PLUGIN_DIR/refund_lot_switch.so" \
    -c "$cfg"
expect "built-in refund scenario picked" 'scenario: +refund_processing_duplicate'
expect "decision is the overlay" 'decision: +overlay \(applied\)'
expect "temperature 0.22" '"temperature": 0\.22'
expect "top_p 0.75" '"top_p": 0\.75'
expect "frequency_penalty 0.40" '"frequency_penalty": 0\.4'
first_system=$(grep -n '"role": "system"' "$FH_TMP/out" | head -1 | cut -d: -f1)
caller=$(grep -n 'You are an operations assistant' "$FH_TMP/out" | head -1 | cut -d: -f1)
directive=$(grep -n -i 'rollback' "$FH_TMP/out" | head -1 | cut -d: -f1)
if [ -n "$first_system" ] && [ -n "$caller" ] && [ -n "$directive" ] &&
    [ "$directive" -lt "$caller" ]; then
    ok "rollback directive comes before the caller's messages"
else
    not_ok "directive order: system=$first_system directive=$directive caller=$caller"
    sed 's/^/    /' "$FH_TMP/out"
fi
expect "evaluation rules are printed" '\[(pass|FAIL)\] explicit_rollback_procedure'

# As an author runs it from a checkout: no -c, the in-tree dev config.
run "plugin-test without -c (in-tree config)" 0 "$FH_BIN" plugin-test "$FH_PLUGIN_DIR/refund_lot_switch.so"
expect "uses config/fusion-host.dev.yaml" 'config: +.*config/fusion-host\.dev\.yaml'
expect "still shows the parameters" '"temperature": 0\.22'

run "plugin-test state_model_first --json" 0 "$FH_BIN" plugin-test \
    "$FH_PLUGIN_DIR/state_model_first.so" -c "$cfg" --json
expect "compliance scenario picked" '"scenario": "regulatory_compliance_audit_prep'
expect "JSON evaluation" '"quality_score"'

cat >"$FH_TMP/scn.json" <<'JSON'
{"request": {"model": "m", "max_tokens": 77, "seed": 5,
  "messages": [{"role": "user", "content": "refund went out twice"}],
  "fusion": {"scenario_type": "refund_processing", "scenario_id": "x1", "confidence": 0.9}},
 "answer": "We will do nothing."}
JSON
run "plugin-test with --scenario" 0 "$FH_BIN" plugin-test "$FH_PLUGIN_DIR/refund_lot_switch.so" \
    -c "$cfg" --scenario "$FH_TMP/scn.json"
expect "caller's max_tokens kept" '"max_tokens": 77'
expect "caller's seed kept" '"seed": 5'
if grep -q '"fusion"' "$FH_TMP/out"; then not_ok "fusion object leaked"; else ok "fusion object removed"; fi
expect "a bad answer fails the rules" 'below threshold'

RESON_FEATURES="" run "plugin-test under emergency rollback" 0 "$FH_BIN" plugin-test \
    "$FH_PLUGIN_DIR/refund_lot_switch.so" -c "$cfg"
expect "decision is baseline env_override" 'decision: +baseline \(env_override\)'

run "plugin-test of a broken plugin" 1 "$FH_BIN" plugin-test "$FH_TEST_PLUGIN_DIR/bad_no_entry.so" -c "$cfg"
expect "says what is wrong" 'fusion_overlay_entry'
run "plugin-test without a path" 2 "$FH_BIN" plugin-test

finish
