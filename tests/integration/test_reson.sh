#!/usr/bin/env bash
# RESON_FEATURES in the daemon's environment: empty means baseline only
# (emergency rollback); a list lets only those features run.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

start_stub
cfg=$(make_config "$FH_TMP/d")
refund='{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"refund_processing","confidence":0.9}}'
audit='{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"regulatory_compliance_audit_prep","confidence":0.9}}'

RESON_FEATURES= start_daemon "$cfg"
post /v1/chat/completions "$refund"
check "RESON_FEATURES empty: baseline" [ "$(header X-Fusion-Overlay)" = baseline ]
check "reason env_override" [ "$(header X-Fusion-Reason)" = env_override ]
check "the upstream got the request without a directive" bash -c "curl -s '$STUB/stub/last' | jq -e '.messages | length == 1'"
stop_daemon

RESON_FEATURES=state_model_first start_daemon "$cfg"
post /v1/chat/completions "$refund"
check "listed: an unlisted feature is not applied" [ "$(header X-Fusion-Reason)" = env_override ]
post /v1/chat/completions "$audit"
check "listed: the listed feature is applied" [ "$(header X-Fusion-Overlay)" = "state_model_first/1.0.0" ]
stop_daemon

RESON_FEATURES=refund_lot_switch,nonexistent start_daemon "$cfg"
check "an unknown name is reported in the log" grep -q nonexistent "$FH_TMP/daemon.log"
post /v1/chat/completions "$refund"
check "the known listed feature still applies" [ "$(header X-Fusion-Reason)" = applied ]
stop_daemon
check "exit 0" [ $? = 0 ]
finish
