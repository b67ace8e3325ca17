#!/usr/bin/env bash
# README's quick start: builds fusion-host if needed (installing missing
# build packages when run as root), then runs the bundled stub model on
# 127.0.0.1:8000 and the daemon on config/fusion-host.dev.yaml
# (127.0.0.1:8080) in the foreground. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if [ ! -x build/bin/fusion-host ] || [ ! -x build/bin/fusion-stub-llm ] ||
    [ -n "$(find host plugins tools sdk -newer build/bin/fusion-host -name '*.[ch]' 2>/dev/null | head -1)" ]; then
    cmake -S . -B build >/dev/null
    cmake --build build -j2
fi

STUB_LISTEN=${STUB_LISTEN:-127.0.0.1:8000}
mkdir -p build/dev-state
portfile=build/dev-state/stub.port
rm -f "$portfile"
build/bin/fusion-stub-llm --listen "$STUB_LISTEN" --port-file "$portfile" --quiet &
stub=$!
trap 'kill "$stub" 2>/dev/null; wait "$stub" 2>/dev/null' EXIT
# Wait until it listens (it writes the port file) or dies.
while [ ! -s "$portfile" ] && kill -0 "$stub" 2>/dev/null; do sleep 0.05; done
if ! kill -0 "$stub" 2>/dev/null; then
    echo "run.sh: the stub model could not listen on $STUB_LISTEN (in use?)." >&2
    echo "        Point upstream.base_url in config/fusion-host.dev.yaml at your own server," >&2
    echo "        or free the port." >&2
    exit 1
fi

cat <<'MSG'

fusion-host is starting on http://127.0.0.1:8080 (upstream: the bundled stub model).
Try an overlaid request:

  curl -s http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"stub","messages":[{"role":"user","content":"Order 4411 was refunded twice."}],
         "fusion":{"scenario_type":"refund_processing_duplicate","confidence":0.9}}'

Health: curl -s http://127.0.0.1:8080/health   Metrics: curl -s http://127.0.0.1:8080/metrics
(After overlaid requests /health says "degraded", token_delta_critical: the stub
follows each directive to the letter, so its overlaid answers use about 150% more
tokens than the baseline, far past the runbook's 25%. A real model differs.)
Stop with Ctrl-C.

MSG
build/bin/fusion-host serve -c config/fusion-host.dev.yaml
