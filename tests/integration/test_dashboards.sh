#!/usr/bin/env bash
# The alert rules (packaging/prometheus/fusion-host.rules.yml) and the
# Grafana dashboard (packaging/grafana/fusion-host.json) against a real
# daemon: after overlaid and baseline requests, an opened breaker and a
# tripped budget gate (so two overlays have gates: the state gauges
# fusion_circuit_breaker_state and fusion_budget_gate_tripped exist only for
# overlays with one), the state gauges say so, every metric, label name and
# label value that any of their queries names is in the daemon's /metrics,
# and every alert's runbook annotation is a heading of docs/operations.md.
# Then promtool checks the rules and runs their unit tests
# (fusion-host.rules.test.yml), when it is installed (scripts/deps.sh
# installs it: Debian's `prometheus` package).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

RULES=$FH_SOURCE_DIR/packaging/prometheus/fusion-host.rules.yml
RULES_TEST=$FH_SOURCE_DIR/packaging/prometheus/fusion-host.rules.test.yml
DASHBOARD=$FH_SOURCE_DIR/packaging/grafana/fusion-host.json
OPERATIONS=$FH_SOURCE_DIR/docs/operations.md

# ---- series for every family: a live daemon ----------------------------------------
start_stub
# The runbook's budgets (warn 12 %, max 25 %): the stub follows every
# directive, so the first overlaid answer trips its overlay's gate.
FH_TEST_BUDGET="{ hook_latency_ms: 60000 }"
cfg=$(make_config "$FH_TMP/d")
sed -i 's|^  refund_lot_switch: {|  refund_lot_switch: { breaker: { failure_threshold: 1, recovery_timeout_s: 600 },|' "$cfg"
start_daemon "$cfg"
req() { # req SCENARIO CONTENT [EXTRA JSON MEMBERS]
    echo "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"$2\"}],\"fusion\":{\"scenario_type\":\"$1\",\"confidence\":0.9}${3:+,$3}}"
}
reasons=
send() { # send SCENARIO CONTENT [EXTRA]: one request, its routing reason noted
    post /v1/chat/completions "$(req "$@")"
    reasons="$reasons $STATUS:$(header X-Fusion-Reason)"
}
send regulatory_compliance_audit_prep "Prepare the SOX evidence binder for the Q3 access review."
send regulatory_compliance_audit_prep "List the controls the auditor samples for change management."
send refund_processing_duplicate "Order 4411 was refunded twice." '"stub":{"reject_if_system":1}'
send refund_processing_duplicate "Order 4412 was refunded twice."
send general_question "What is the capital of Portugal?"
send general_question "Summarise the incident timeline."
check "traffic: applied, gate tripped, breaker opened and open, baseline ($reasons )" \
    test "$reasons" = " 200:applied 200:budget_tokens 200:overlay_rejected_upstream 200:breaker_open 200:no_match 200:no_match"
curl -s "$FH/metrics" >"$FH_TMP/metrics.txt"
check "/metrics served ($(wc -l <"$FH_TMP/metrics.txt") lines)" grep -q '^fusion_requests_total{' "$FH_TMP/metrics.txt"
# The state gauges (what /health says) for the two overlays with a gate:
# state_model_first's gate tripped, refund_lot_switch's breaker open.
for want in 'fusion_health_degraded 1' \
    'fusion_circuit_breaker_state{overlay="refund_lot_switch",result="open"} 1' \
    'fusion_circuit_breaker_state{overlay="refund_lot_switch",result="closed"} 0' \
    'fusion_circuit_breaker_state{overlay="state_model_first",result="closed"} 1' \
    'fusion_circuit_breaker_state{overlay="state_model_first",result="half_open"} 0' \
    'fusion_budget_gate_tripped{overlay="state_model_first"} 1' \
    'fusion_budget_gate_tripped{overlay="refund_lot_switch"} 0'; do
    check "/metrics: $want" grep -qxF "$want" "$FH_TMP/metrics.txt"
done
stop_daemon

# ---- every query against the live series ----------------------------------------------
# Prints "ok NAME" / "not_ok NAME" lines, then the problems indented.
cat >"$FH_TMP/queries.py" <<'PY'
import json, re, sys
import yaml

metrics_file, rules_file, dash_file, ops_file = sys.argv[1:5]

# Live series: metric -> label -> values seen; metric -> [labels of a series].
live = {}
series = {}
sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+$')
pair = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
for line in open(metrics_file):
    line = line.strip()
    if not line or line.startswith('#'):
        continue
    m = sample.match(line)
    if not m:
        print("not_ok /metrics line parses: %r" % line)
        continue
    labels = live.setdefault(m.group(1), {})
    series.setdefault(m.group(1), []).append(dict(pair.findall(m.group(2) or '')))
    for k, v in pair.findall(m.group(2) or ''):
        labels.setdefault(k, set()).add(v)

# Labels any query may name: the histogram bucket label, the metric name,
# and the target labels Prometheus adds to every scraped series.
ALWAYS = {'le', '__name__', 'job', 'instance'}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
SELECTOR = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}')
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
LIST = re.compile(r'\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)')
FUSION = re.compile(r'\bfusion_[a-zA-Z0-9_]+\b')
LABEL_VALUES = re.compile(r'^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$', re.S)
TEMPLATE_LABEL = re.compile(r'\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}')
ANNOTATION_LABEL = re.compile(r'\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)')

problems = {'metric names': [], 'label names': [], 'label values': [], 'rules': [],
            'dashboard': [], 'runbook anchors': []}
checked = {'queries': 0, 'metrics': set(), 'labels': set(), 'values': 0}


def check_query(where, expr, extra_labels=()):
    """expr: PromQL (Grafana variables allowed); extra_labels: label names a
    legend or an annotation takes from its result."""
    checked['queries'] += 1
    expr = re.sub(r'\$__(rate_interval|interval|range)\b', '5m', expr)
    extra = ()
    m = LABEL_VALUES.match(expr)
    if m:
        expr, extra = m.group(1), (m.group(2),)
    bare = STRING.sub('""', expr)
    names = set(FUSION.findall(bare))
    for n in sorted(names):
        checked['metrics'].add(n)
        if n not in live:
            problems['metric names'].append('%s: %s is not in /metrics' % (where, n))
    known = set(ALWAYS)
    for n in names:
        known |= set(live.get(n, {}))
    used = set(extra) | set(extra_labels)
    for _, body in LIST.findall(bare):
        used |= {x.strip() for x in body.split(',') if x.strip()}
    # A selector's = and =~ matchers (those without a Grafana variable)
    # together select at least one live series.
    for metric, body in SELECTOR.findall(expr):
        want = []
        for label, op, value in MATCHER.findall(body):
            used.add(label)
            if metric.startswith('fusion_') and '$' not in value and op in ('=', '=~'):
                want.append((label, op, value))
        if not want:
            continue
        checked['values'] += len(want)
        selects = lambda s: all(s.get(l) == v if op == '=' else re.fullmatch(v, s.get(l, '')) for l, op, v in want)
        if not any(selects(s) for s in series.get(metric, [])):
            problems['label values'].append('%s: %s{%s} selects no series of /metrics' % (
                where, metric, ', '.join('%s%s"%s"' % w for w in want)))
    if not names:  # up{job=...}: only the target labels
        known = set(ALWAYS)
    for label in sorted(used):
        checked['labels'].add(label)
        if label not in known:
            problems['label names'].append('%s: label %s is on none of %s' % (where, label, sorted(names) or 'its series'))


# ---- the rules
rules = yaml.safe_load(open(rules_file))
alerts = [r for g in rules['groups'] for r in g['rules'] if 'alert' in r]
anchors = {}
for r in alerts:
    a = r.get('annotations', {})
    used = set()
    for text in a.values():
        used |= set(ANNOTATION_LABEL.findall(text))
    check_query('rule %s' % r['alert'], r['expr'], used)
    if r.get('labels', {}).get('severity') not in ('info', 'warning', 'critical'):
        problems['rules'].append('%s: severity label is %r' % (r['alert'], r.get('labels', {}).get('severity')))
    m = re.fullmatch(r'docs/operations\.md#([a-z0-9-]+)', a.get('runbook', ''))
    if not m:
        problems['rules'].append('%s: runbook annotation %r is not docs/operations.md#anchor' % (r['alert'], a.get('runbook')))
    else:
        anchors.setdefault(m.group(1), []).append(r['alert'])
    if not a.get('summary') or not a.get('description'):
        problems['rules'].append('%s: no summary or description' % r['alert'])
names = [r['alert'] for r in alerts]
if len(set(names)) != len(names):
    problems['rules'].append('alert names repeat: %s' % names)

# ---- the runbook anchors: a heading of docs/operations.md each (GitHub's slugs)
slugs = set()
in_code = False
for line in open(ops_file):
    if line.startswith('```'):
        in_code = not in_code
    m = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
    if m and not in_code:
        text = re.sub(r'[^\w\- ]', '', m.group(1).lower().replace('`', ''))
        slugs.add(text.replace(' ', '-'))
for anchor, who in sorted(anchors.items()):
    if anchor not in slugs:
        problems['runbook anchors'].append('#%s (%s): no such heading in docs/operations.md' % (anchor, ', '.join(who)))

# ---- the dashboard
dash = json.load(open(dash_file))
if not 30 <= dash.get('schemaVersion', 0) <= 41:
    problems['dashboard'].append('schemaVersion %r' % dash.get('schemaVersion'))
variables = {v['name']: v for v in dash.get('templating', {}).get('list', [])}
dsvar = [n for n, v in variables.items() if v.get('type') == 'datasource' and v.get('query') == 'prometheus']
if not dsvar:
    problems['dashboard'].append('no Prometheus datasource variable')
for n, v in variables.items():
    if v.get('type') == 'query':
        q = v['query']['query'] if isinstance(v.get('query'), dict) else v.get('query')
        check_query('variable %s' % n, q)


def walk(node, panel=None):
    if isinstance(node, dict):
        if 'gridPos' in node and 'type' in node:
            panel = node
            ds = node.get('datasource')
            if node['type'] != 'row' and (not ds or ds.get('uid') != '${%s}' % (dsvar[0] if dsvar else '?')):
                problems['dashboard'].append('panel %r: datasource %r is not the variable' % (node.get('title'), ds))
        if 'expr' in node:
            legend = node.get('legendFormat', '') or ''
            check_query('panel %r' % (panel or {}).get('title'), node['expr'], TEMPLATE_LABEL.findall(legend))
        for v in node.values():
            walk(v, panel)
    elif isinstance(node, list):
        for v in node:
            walk(v, panel)


walk(dash.get('panels', []))
ids = [p['id'] for p in dash.get('panels', [])]
if len(set(ids)) != len(ids):
    problems['dashboard'].append('panel ids repeat')
titles = ' | '.join(p.get('title', '') for p in dash.get('panels', []))
for want in ('fusion_requests_total', 'fusion_execution_latency_ms_bucket', 'fusion_overhead_ms_bucket',
             'fusion_tokens_delta_pct', 'fusion_quality_score', 'fusion_circuit_breaker_events_total',
             'fusion_overlay_state', 'fusion_client_cancelled_total', 'fusion_metrics_dropped_total',
             'fusion_health_degraded', 'fusion_circuit_breaker_state', 'fusion_budget_gate_tripped'):
    if want not in json.dumps(dash):
        problems['dashboard'].append('no panel queries %s' % want)

summary = {
    'metric names': '%d fusion_* names in %d queries are in /metrics' % (len(checked['metrics']), checked['queries']),
    'label names': 'label names %s are on their series' % ','.join(sorted(checked['labels'])),
    'label values': 'the %d label matchers select series of /metrics' % checked['values'],
    'rules': '%d alerts with severity, summary, description, runbook' % len(alerts),
    'dashboard': '%d panels, a datasource variable, every family shown' % len(ids),
    'runbook anchors': 'runbook anchors %s are headings of docs/operations.md' % ' '.join('#' + a for a in sorted(anchors)),
}
for k, text in summary.items():
    print(('not_ok ' if problems[k] else 'ok ') + text)
    for p in problems[k]:
        print('    ' + p)
PY
python3 "$FH_TMP/queries.py" "$FH_TMP/metrics.txt" "$RULES" "$DASHBOARD" "$OPERATIONS" >"$FH_TMP/queries.out" 2>&1 ||
    not_ok "the query checker ran: $(cat "$FH_TMP/queries.out")"
while IFS= read -r line; do
    case $line in
        "ok "*) ok "${line#ok }" ;;
        "not_ok "*) not_ok "${line#not_ok }" ;;
        *) echo "$line" ;;
    esac
done <"$FH_TMP/queries.out"

# ---- promtool ---------------------------------------------------------------------------
if command -v promtool >/dev/null; then
    cd "$(dirname "$RULES")" || exit 1
    run "promtool check rules $(basename "$RULES")" 0 promtool check rules "$(basename "$RULES")"
    expect "promtool found every rule" "SUCCESS: [0-9]+ rules found"
    sed 's/^/    /' "$FH_TMP/out"
    run "promtool test rules $(basename "$RULES_TEST")" 0 promtool test rules "$(basename "$RULES_TEST")"
    expect "promtool: the rule tests pass" "SUCCESS"
    cd - >/dev/null || exit 1
elif [ -n "${CI:-}" ]; then
    not_ok "promtool is on PATH in CI (scripts/deps.sh installs Debian's prometheus package)"
else
    skip "promtool not installed (scripts/deps.sh installs Debian's prometheus package)"
fi
finish
