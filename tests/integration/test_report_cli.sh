#!/usr/bin/env bash
# budget and compare as an operator runs them on bench reports: the
# hand-written reports in tests/fixtures/reports/ (healthy, warnings only,
# a critical token delta, a critical latency, every run failed, a scenario
# missing, a baseline), exit codes 0/1/2, the markdown tables, JSON that
# parses, and the messages for files that are not reports.
. "$(dirname "$0")/lib.sh"

FIX=$FH_SOURCE_DIR/tests/fixtures/reports

# json_check NAME PYTHON_EXPR: the last output parses as JSON and the
# expression (over `d`) is true.
json_check() {
    if python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' \
        "$FH_TMP/out" "$2" 2>"$FH_TMP/py.err"; then
        ok "$1"
    else
        not_ok "$1: not true of the JSON output: $2"
        sed 's/^/    /' "$FH_TMP/out" "$FH_TMP/py.err" | head -n 40
    fi
}

# A copy of a fixture changed by a python statement over `d`.
edited() {
    local src=$1 dst=$FH_TMP/$2
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); exec(sys.argv[3]); json.dump(d, open(sys.argv[2], "w"))' \
        "$FIX/$src" "$dst" "$3"
    echo "$dst"
}

# ---- budget -------------------------------------------------------------

run "budget: healthy report" 0 "$FH_BIN" budget --report-file "$FIX/healthy.json"
expect "title" '^# Budget analysis$'
expect "table header" '^\| scenario \| overlay \| p95 ms \| status \| token delta % \| status \| quality \| status \| failed % \| status \|$'
expect "a scenario row" '^\| refund_processing_duplicate \| refund_lot_switch \| 1675\.6 \| ok \| 8\.0 \| ok \| 0\.910 \| ok \| 0\.0 \| ok \|$'
expect "a scenario no overlay served: token delta and quality unknown" '^\| security_incident_containment \| baseline \| 1745\.5 \| ok \| - \| unknown \| - \| unknown \| 0\.0 \| ok \|$'
expect "overall row" '^\| \*\*overall\*\* \| \| 1947\.3 \| ok \| 8\.0 \| ok \| 0\.884 \| ok \| 0\.0 \| ok \|$'
expect "summary" '^\*\*All figures within the runbook thresholds\*\*; 10 unknown'

run "budget: warnings only exit 0" 0 "$FH_BIN" budget --report-file "$FIX/warnings.json"
expect "latency warning" '^\| regulatory_compliance_audit_prep \| state_model_first \| 2412\.6 \| \*\*warning\*\* \|'
expect "token delta warning" '^\| refund_processing_duplicate \| refund_lot_switch \| [0-9.]+ \| ok \| 18\.3 \| \*\*warning\*\* \|'
expect "quality warning" '\| 0\.760 \| \*\*warning\*\* \| 0\.0 \| ok \|$'
expect "summary counts 4 warnings" '^\*\*4 warnings \(refund_processing_duplicate token delta, regulatory_compliance_audit_prep p95 latency, compliance_audit_dsar_backlog mean quality, overall p95 latency\)\*\*'
expect "quality hint" '^- \*\*warning\*\*: compliance_audit_dsar_backlog mean quality 0\.760 is under 0\.8: follow "Quality degradation" in docs/operations\.md\.$'

run "budget: critical token delta exit 1" 1 "$FH_BIN" budget --report-file "$FIX/critical_tokens.json"
expect "critical row" '^\| refund_processing_duplicate \| refund_lot_switch \| [0-9.]+ \| ok \| 40\.6 \| \*\*critical\*\* \|'
expect "summary" '^\*\*1 critical \(refund_processing_duplicate token delta\), 2 warnings \(refund_duplicate_webhook_replay token delta, overall token delta\)\*\*'
expect "budget hint" '^- \*\*critical\*\*: refund_processing_duplicate token delta 40\.6 % is over 25 %: follow "Budget violations" in docs/operations\.md\.$'

run "budget: critical latency exit 1" 1 "$FH_BIN" budget --report-file "$FIX/critical_latency.json"
expect "critical latency row" '^\| regulatory_compliance_audit_prep \| state_model_first \| 5612\.4 \| \*\*critical\*\* \|'
expect "overall critical" '^\| \*\*overall\*\* \| \| 5500\.2 \| \*\*critical\*\* \|'
expect "latency hint" '^- \*\*critical\*\*: regulatory_compliance_audit_prep p95 latency 5612\.4 ms is over 5000 ms: follow "High latency" in docs/operations\.md\.$'
expect "failed runs said" 'Note: overlaid runs failed .*regulatory_compliance_audit_prep 2 of 10'
expect "2 of 10 failed runs a warning" '^\| regulatory_compliance_audit_prep \| state_model_first \| 5612\.4 \| \*\*critical\*\* \| 7\.9 \| ok \| 0\.880 \| ok \| 20\.0 \| \*\*warning\*\* \|$'
expect "2 of 200 overall a warning" '^\| \*\*overall\*\* \| \| 5500\.2 \| \*\*critical\*\* \| 8\.0 \| ok \| 0\.884 \| ok \| 1\.0 \| \*\*warning\*\* \|$'
expect "failed runs hint" '^- \*\*warning\*\*: regulatory_compliance_audit_prep failed runs 20\.0 % is over 0 %: follow "Health checks" in docs/operations\.md\.$'

run "budget --output-format json, critical" 1 "$FH_BIN" budget --report-file "$FIX/critical_latency.json" --output-format json
json_check "JSON counts" 'd["critical"] == 2 and d["warnings"] == 3 and d["unknown"] == 10'
json_check "JSON figures" '[s for s in d["scenarios"] if s["id"] == "regulatory_compliance_audit_prep"][0]["figures"]["latency_p95_ms"] == {"value": 5612.4, "status": "critical"}'
json_check "JSON unknown is null" 'd["scenarios"][1]["figures"]["quality_mean"] == {"value": None, "status": "unknown"}'
json_check "JSON overall" 'd["overall"]["figures"]["latency_p95_ms"]["status"] == "critical" and d["overall"]["status"] == "critical"'
json_check "JSON failed runs figure" '[s for s in d["scenarios"] if s["id"] == "regulatory_compliance_audit_prep"][0]["figures"]["failed_runs_pct"] == {"value": 20.0, "status": "warning"} and d["scenarios"][0]["figures"]["failed_runs_pct"] == {"value": 0.0, "status": "ok"}'
json_check "JSON failed runs threshold" 'd["thresholds"]["failed_runs_pct"]["warning_over"] == 0 and d["thresholds"]["failed_runs_pct"]["procedure"] == "Health checks"'
json_check "JSON breaches name the procedure" '[(b["scenario"], b["procedure"]) for b in d["breaches"]] == [("regulatory_compliance_audit_prep", "High latency"), ("regulatory_compliance_audit_prep", "Health checks"), ("compliance_audit_dsar_backlog", "High latency"), ("overall", "High latency"), ("overall", "Health checks")]'
run "budget --output-format=json, healthy" 0 "$FH_BIN" budget --output-format=json --report-file="$FIX/healthy.json"
json_check "healthy JSON" 'd["critical"] == 0 and d["warnings"] == 0 and len(d["scenarios"]) == 10 and d["report"]["iterations"] == 5'
run "budget --output-format markdown" 0 "$FH_BIN" budget --report-file "$FIX/healthy.json" --output-format markdown

# Figures at the thresholds' edges and unknown ones, through the binary.
f=$(edited healthy.json edges.json '
s = d["scenarios"]
s[0]["overlay"]["latency_ms"]["p95"] = 2000.0
s[1]["overlay"]["latency_ms"]["p95"] = 2000.1
s[2]["token_delta_pct"] = 25.0
s[9]["token_delta_pct"] = None
s[4]["overlay"]["quality"]["mean"] = 0.8
del s[5]["overlay"]["latency_ms"]
s[6]["overlay"]["failed"] = 1
s[6]["overlay"]["reasons"] = {"no_match": 4, "http_502": 1}
d["overall"]["failed"] = 1
del s[7]["overlay"]["runs"]')
run "budget: exactly at the thresholds is not critical" 0 "$FH_BIN" budget --report-file "$f"
expect "2000 ms is ok" '^\| refund_processing_duplicate \| refund_lot_switch \| 2000\.0 \| ok \|'
expect "2000.1 ms is a warning" '^\| security_incident_containment \| baseline \| 2000\.1 \| \*\*warning\*\* \|'
expect "25 % is a warning" '^\| regulatory_compliance_audit_prep \| state_model_first \| [0-9.]+ \| ok \| 25\.0 \| \*\*warning\*\* \|'
expect "null token delta is unknown" '^\| refund_duplicate_webhook_replay \| refund_lot_switch \| [0-9.]+ \| ok \| - \| unknown \| 0\.930 \| ok \| 0\.0 \| ok \|$'
expect "quality 0.8 is ok" '^\| lot_switch_recall_reallocation \| refund_lot_switch \| [0-9.]+ \| ok \| [0-9.]+ \| ok \| 0\.800 \| ok \| 0\.0 \| ok \|$'
expect "absent latency is unknown" '^\| data_migration_rollback_orders \| baseline \| - \| unknown \|'
expect "1 of 5 failed runs is a warning, not critical" '^\| webhook_failure_cascade_orders \| baseline \| [0-9.]+ \| ok \| - \| unknown \| - \| unknown \| 20\.0 \| \*\*warning\*\* \|$'
expect "absent runs: failed runs unknown" '^\| compliance_audit_dsar_backlog \| state_model_first \| [0-9.]+ \| ok \| [0-9.]+ \| ok \| [0-9.]+ \| ok \| - \| unknown \|$'

# Every run failed (bench against an upstream that never answered): the
# other figures are unknown, and the report must not read as healthy.
run "budget: every run failed exit 1" 1 "$FH_BIN" budget --report-file "$FIX/all_failed.json"
expect "a scenario row" '^\| refund_processing_duplicate \| baseline \| - \| unknown \| - \| unknown \| - \| unknown \| 100\.0 \| \*\*critical\*\* \|$'
expect "overall row" '^\| \*\*overall\*\* \| \| - \| unknown \| - \| unknown \| - \| unknown \| 100\.0 \| \*\*critical\*\* \|$'
expect "summary names failed runs" '^\*\*11 critical \(refund_processing_duplicate failed runs, .*, overall failed runs\)\*\*; 33 unknown'
expect "hint names Health checks" '^- \*\*critical\*\*: refund_processing_duplicate failed runs: every run failed: follow "Health checks" in docs/operations\.md\.$'
expect "failed runs said" 'Note: overlaid runs failed .*refund_processing_duplicate 2 of 2'
if grep -q 'All figures within the runbook thresholds' "$FH_TMP/out"; then
    not_ok "every run failed does not read as healthy"
else
    ok "every run failed does not read as healthy"
fi
run "budget --output-format json, every run failed" 1 "$FH_BIN" budget --report-file "$FIX/all_failed.json" --output-format json
json_check "JSON every row critical on failed runs" 'all(s["status"] == "critical" and s["figures"]["failed_runs_pct"] == {"value": 100.0, "status": "critical"} for s in d["scenarios"] + [d["overall"]])'
json_check "JSON counts" 'd["critical"] == 11 and d["warnings"] == 0 and d["unknown"] == 33 and len(d["scenarios"]) == 10'
json_check "JSON breaches: failed runs, Health checks" '{(b["figure"], b["procedure"]) for b in d["breaches"]} == {("failed_runs_pct", "Health checks")} and len(d["breaches"]) == 11'

# Reports that cannot be read: exit 2, the file and the cause named.
run "budget: missing file" 2 "$FH_BIN" budget --report-file "$FH_TMP/nope.json"
expect "names the file and the cause" 'fusion-host: budget: .*/nope\.json: cannot read the report: No such file or directory'
run "budget: not a report" 2 "$FH_BIN" budget --report-file "$FIX/not_a_report.json"
expect "says it is not a report" 'not_a_report\.json: not a fusion-host bench report \(no "format": 1\)'
run "budget: truncated report" 2 "$FH_BIN" budget --report-file "$FIX/truncated.json"
expect "says where the JSON breaks" 'truncated\.json:[0-9]+:[0-9]+: not valid JSON'
f=$(edited healthy.json typed.json 'd["scenarios"][2]["overlay"]["latency_ms"]["p95"] = "1.9 s"')
run "budget: a figure of the wrong type" 2 "$FH_BIN" budget --report-file "$f"
expect "names the field" 'typed\.json: scenarios\[2\] \(regulatory_compliance_audit_prep\)\.overlay\.latency_ms\.p95: expected a number or null, found a string'
f=$(edited healthy.json format2.json 'd["format"] = 2')
run "budget: a newer format" 2 "$FH_BIN" budget --report-file "$f"
expect "says which format" 'report format 2; this fusion-host reads format 1'
run "budget: a folder" 2 "$FH_BIN" budget --report-file "$FIX"
expect "says it is a folder" 'is a folder'

# Usage errors.
run "budget without --report-file" 2 "$FH_BIN" budget
expect "says what is required" '--report-file FILE is required'
run "budget --report-file without a value" 2 "$FH_BIN" budget --report-file
expect "says it needs a file" '--report-file needs a file'
run "budget --output-format yaml" 2 "$FH_BIN" budget --report-file "$FIX/healthy.json" --output-format yaml
expect "names the formats" '--output-format is markdown or json, not .yaml.'
run "budget with a stray argument" 2 "$FH_BIN" budget --report-file "$FIX/healthy.json" extra
expect "names it" "unexpected argument 'extra'"
run "budget --report-file twice" 2 "$FH_BIN" budget --report-file "$FIX/healthy.json" --report-file "$FIX/warnings.json"
run "budget --help" 0 "$FH_BIN" budget --help
expect "usage" '^Usage: fusion-host budget --report-file FILE'

# A failed write is not a verdict.
"$FH_BIN" budget --report-file "$FIX/healthy.json" >/dev/full 2>"$FH_TMP/out"
rc=$?
if [ "$rc" -eq 2 ] && grep -q 'cannot write the output' "$FH_TMP/out"; then
    ok "budget: a full disk is exit 2"
else
    not_ok "budget: a full disk is exit $rc"
fi

# ---- compare ------------------------------------------------------------

run "compare: healthy against the baseline" 0 "$FH_BIN" compare --baseline "$FIX/baseline.json" --current "$FIX/healthy.json"
expect "title" '^# Comparison$'
expect "table header" '^\| scenario \| p50 ms \| p95 ms \| token delta % \| quality \| rule pass rate \| verdict \|$'
expect "a row with changes" '^\| refund_processing_duplicate \| 1180\.4 → 1215\.8 \(\+3\.0 %\) \| 1642\.7 → 1675\.6 \(\+2\.0 %\) \| 5\.9 → 8\.0 \(\+2\.1 pts\) \| 0\.910 → 0\.910 \(0\.000\) \| 0\.933 → 0\.933 \(0\.000\) \| ok \|$'
expect "overall row" '^\| \*\*overall\*\* \| 1271\.7 → 1309\.9 \(\+3\.0 %\) \|'
expect "summary" '^\*\*No regressions\*\*: 10 scenarios in both reports\.$'
if grep -q '^warning:' "$FH_TMP/out"; then not_ok "no warnings for like reports"; else ok "no warnings for like reports"; fi

run "compare: warnings report regresses" 1 "$FH_BIN" compare --baseline "$FIX/baseline.json" --current "$FIX/warnings.json"
expect "token delta regression" '^\| refund_processing_duplicate \|.*\*\*5\.9 → 18\.3 \(\+12\.4 pts\)\*\*.*\| \*\*regression\*\*: token delta \|$'
expect "p95 regression" '^\| regulatory_compliance_audit_prep \|.*\*\*1893\.6 → 2412\.6 \(\+27\.4 %\)\*\*.*\| \*\*regression\*\*: p95 latency \|$'
expect "quality and rules regression" '^\| compliance_audit_dsar_backlog \|.*\*\*0\.840 → 0\.760 \(-0\.080\)\*\* \| \*\*0\.800 → 0\.600 \(-0\.200\)\*\* \| \*\*regression\*\*: mean quality, rule pass rate \|$'
expect "config hash warning" '^warning: the reports were made with different configurations: config_hash 3b9f0c6e2d4a\.\.\. in the baseline, c41e8a2f9b7d\.\.\. in the current'
expect "summary" '^\*\*5 regressions\*\* \(10 scenarios in both reports\):$'
expect "hint" '^- compliance_audit_dsar_backlog: mean quality 0\.840 → 0\.760: follow "Quality degradation" in docs/operations\.md\.$'

run "compare: critical latency regresses" 1 "$FH_BIN" compare --baseline "$FIX/baseline.json" --current "$FIX/critical_latency.json"
expect "iterations warning" '^warning: the reports ran different numbers of iterations \(5 in the baseline, 10 in the current\)'
expect "failed runs warning" '^warning: regulatory_compliance_audit_prep: 2 of 10 overlaid runs failed in the current report, 0 of 5 in the baseline one$'
expect "hint" '^- regulatory_compliance_audit_prep: p95 latency 1893\.6 → 5612\.4 ms: follow "High latency"'

run "compare: a scenario missing" 1 "$FH_BIN" compare --baseline "$FIX/baseline.json" --current "$FIX/missing_scenario.json"
expect "missing row" '^\| webhook_failure_cascade_orders \| 1130\.6 → - \| 1467\.9 → - \|.*\| \*\*regression\*\*: missing from the current report \|$'
expect "new row" '^\| chargeback_dispute_evidence \| - → 1210\.5 \| - → 1604\.2 \|.*\| new \|$'
expect "summary" '^\*\*1 regression\*\* \(9 scenarios in both reports, 1 new\):$'

run "compare: a report against itself" 0 "$FH_BIN" compare --baseline "$FIX/healthy.json" --current "$FIX/healthy.json"
run "compare: the critical token delta, as JSON" 1 "$FH_BIN" compare --baseline "$FIX/healthy.json" --current "$FIX/critical_tokens.json" --output-format json
json_check "JSON verdicts" '[s["verdict"] for s in d["scenarios"]].count("regression") == 2 and d["regressions"] == 3'
json_check "JSON figures" 'd["scenarios"][0]["figures"]["token_delta_pct"]["baseline"] == 8.0 and d["scenarios"][0]["figures"]["token_delta_pct"]["current"] == 40.6 and d["scenarios"][0]["figures"]["token_delta_pct"]["regression"] is True'
json_check "JSON change in points" 'abs(d["scenarios"][0]["figures"]["token_delta_pct"]["change_points"] - 32.6) < 1e-9'
json_check "JSON overall and no warnings" 'd["overall"]["verdict"] == "regression" and d["overall"]["regressions"] == ["token_delta_pct"] and d["warnings"] == []'
run "compare: missing, as JSON" 1 "$FH_BIN" compare --baseline "$FIX/baseline.json" --current "$FIX/missing_scenario.json" --output-format=json
json_check "JSON missing and new" '{s["id"]: s["verdict"] for s in d["scenarios"]}["webhook_failure_cascade_orders"] == "missing" and d["scenarios"][-1] ["verdict"] == "new" and d["scenarios"][-1]["figures"]["latency_p95_ms"]["baseline"] is None'

run "compare without --current" 2 "$FH_BIN" compare --baseline "$FIX/baseline.json"
expect "says what is required" '--current FILE is required'
run "compare without arguments" 2 "$FH_BIN" compare
expect "says what is required" '--baseline FILE is required'
run "compare: an unreadable current report" 2 "$FH_BIN" compare --baseline "$FIX/baseline.json" --current "$FH_TMP/gone.json"
expect "names the file" 'fusion-host: compare: .*/gone\.json: cannot read the report'
run "compare: a baseline that is not a report" 2 "$FH_BIN" compare --baseline "$FIX/not_a_report.json" --current "$FIX/healthy.json"
expect "names the file" 'not_a_report\.json: not a fusion-host bench report'
run "compare --output-format html" 2 "$FH_BIN" compare --baseline "$FIX/baseline.json" --current "$FIX/healthy.json" --output-format html

finish
