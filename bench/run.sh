#!/usr/bin/env bash
# Throughput benchmark (SPEC section 11), rerunnable by anyone:
#   nginx serves a fixed chat-completion answer (the fast upstream);
#   A: wrk -> nginx as a plain reverse proxy -> nginx upstream (the reference)
#   B: wrk -> fusion-host with an overlay applied -> nginx upstream
#   C: wrk -> fusion-host, baseline (no overlay) -> nginx upstream
# at 64 and 8 connections. Loopback only; every run is bounded in time.
#   bench/run.sh [SECONDS]      (default 10 per run; needs a built build/)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "bench: run: sudo apt-get install -y ${need[*]}" >&2
        exit 1
    fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x build/bin/fusion-host ] || { echo "bench: build first (scripts/test.sh or cmake --build build)" >&2; exit 1; }

T=$(mktemp -d /tmp/fh-bench-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$T/nginx.pid" ] && kill "$(cat "$T/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

# A free loopback port, from the kernel.
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null ||
    echo $((20000 + RANDOM % 20000)); }
UP=$(free_port); PROXY=$(free_port)

answer='{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Rollback plan: 1. Revert the refund. 2. Roll back the ledger entry. Compensating action: credit back. If the reversal fails or times out, retry with the same idempotency key so it applies exactly once."},"finish_reason":"stop"}],"usage":{"prompt_tokens":120,"completion_tokens":60,"total_tokens":180}}'
mkdir -p "$T/ng"
cat >"$T/nginx.conf" <<NGX
worker_processes 1;
pid $T/nginx.pid;
error_log $T/ng/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $T/ng; proxy_temp_path $T/ng; fastcgi_temp_path $T/ng;
  uwsgi_temp_path $T/ng; scgi_temp_path $T/ng;
  upstream llm { server 127.0.0.1:$UP; keepalive 128; }
  server { listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '$answer'; } }
  server { listen 127.0.0.1:$PROXY;
    location / { proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGX
"$NGINX" -c "$T/nginx.conf" -p "$T"

mkdir -p "$T/fh/state"
cp -r config/overlay_feature_flags.yaml config/micro_overlays "$T/fh/"
cat >"$T/fh/fusion-host.yaml" <<YAML
listen: "127.0.0.1:0"
admin: { listen: "unix:state/admin.sock" }
upstream: { base_url: "http://127.0.0.1:$UP/v1", timeout_ms: 10000 }
plugins: { dir: "$PWD/build/plugins", watch: false }
state_dir: "state"
feature_flags: "overlay_feature_flags.yaml"
micro_overlays_dir: "micro_overlays"
environment: "production"
YAML
build/bin/fusion-host --log-level warn serve -c "$T/fh/fusion-host.yaml" --ready-file "$T/ready" 2>"$T/fh.log" &
pids+=($!)
for _ in $(seq 200); do [ -s "$T/ready" ] && break; sleep 0.05; done
FH=$(sed -n 's/^listen=//p' "$T/ready")

lua() { # lua FILE BODY
    cat >"$1" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[$2]]
LUA
}
lua "$T/overlay.lua" '{"model":"bench","messages":[{"role":"user","content":"Order 4411 was refunded twice."}],"fusion":{"scenario_type":"refund_processing_duplicate","confidence":0.9}}'
lua "$T/baseline.lua" '{"model":"bench","messages":[{"role":"user","content":"Order 4411 was refunded twice."}]}'

# Check the overlay really is applied before measuring it.
curl -s -D - -o /dev/null -H 'Content-Type: application/json' \
    -d '{"model":"b","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"refund_processing_duplicate"}}' \
    "http://$FH/v1/chat/completions" | grep -qi '^X-Fusion-Reason: applied' ||
    { echo "bench: the overlay is not applied; see $T/fh.log" >&2; exit 1; }

run() { # run LABEL URL LUA CONNS -> "rps p50 p99"
    local out
    out=$(wrk -t2 -c"$4" -d"${SECS}s" --latency -s "$3" "$2" 2>&1)
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    printf '%-34s conns=%-3s rps=%-10s p50=%-9s p99=%s\n' "$1" "$4" "$rps" "$p50" "$p99"
}
echo "# $(nproc) cores, ${SECS}s per run, wrk -t2; upstream: nginx returning a fixed answer"
for c in 64 8; do
    run "nginx reverse proxy (reference)" "http://127.0.0.1:$PROXY/v1/chat/completions" "$T/baseline.lua" $c
    run "fusion-host, overlay applied" "http://$FH/v1/chat/completions" "$T/overlay.lua" $c
    run "fusion-host, baseline" "http://$FH/v1/chat/completions" "$T/baseline.lua" $c
done
