# Helpers to run the real daemon against the bundled stub model (sourced
# after lib.sh). Ports are chosen by the kernel (port 0) and read back from
# the processes' ready files; every wait is on a condition, bounded in time.
STUB_BIN=${FH_BINARY_DIR:?}/bin/fusion-stub-llm
STUB_PID=
LISTENER_PID=
FH_PID=
STUB=
FH=

# wait_for TIMEOUT_S CMD...: polls CMD until it succeeds; 1 on timeout.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.02
    done
}

start_stub() {
    rm -f "$FH_TMP/stub.port"
    "$STUB_BIN" --listen 127.0.0.1:0 --port-file "$FH_TMP/stub.port" --quiet \
        >"$FH_TMP/stub.log" 2>&1 &
    STUB_PID=$!
    wait_for 10 test -s "$FH_TMP/stub.port" || { echo "stub did not start"; cat "$FH_TMP/stub.log"; exit 1; }
    STUB="http://127.0.0.1:$(cat "$FH_TMP/stub.port")"
}

# start_notify_listener: a stand-in systemd notify socket at
# $FH_TMP/notify.sock, its messages logged (one per line) in $FH_TMP/notify.log.
start_notify_listener() {
    : >"$FH_TMP/notify.log"
    "$FH_TOOLS_DIR/notify-listen" "$FH_TMP/notify.sock" "$FH_TMP/notify.log" &
    LISTENER_PID=$!
    wait_for 5 test -S "$FH_TMP/notify.sock" || { echo "no notify socket"; exit 1; }
}

# make_config DIR [UPSTREAM_URL]: a daemon config in DIR using the shipped
# flags, texts and the built plugins. Prints the config path.
make_config() {
    local dir=$1 upstream=${2:-$STUB/v1}
    mkdir -p "$dir/plugins" "$dir/state"
    chmod 755 "$dir" "$dir/plugins"
    cp "$FH_SOURCE_DIR/config/overlay_feature_flags.yaml" "$dir/"
    cp -r "$FH_SOURCE_DIR/config/micro_overlays" "$dir/"
    cp "$FH_PLUGIN_DIR"/*.so "$dir/plugins/"
    local limits=${FH_TEST_LIMITS:-"{ max_body_bytes: 65536, max_connections: 10000 }"}
    local budget=${FH_TEST_BUDGET:-"{ hook_latency_ms: 60000, token_delta_warn_pct: 100000, token_delta_max_pct: 100000, consecutive_breaches: 1000 }"}
    cat >"$dir/fusion-host.yaml" <<YAML
listen: "127.0.0.1:0"
admin:
  listen: "unix:state/admin.sock"
upstream:
  base_url: "$upstream"
  api_key_env: "FH_TEST_UPSTREAM_KEY"
  timeout_ms: ${FH_TEST_TIMEOUT_MS:-3000}
  idle_timeout_ms: ${FH_TEST_IDLE_MS:-${FH_TEST_TIMEOUT_MS:-3000}}
  connect_timeout_ms: 1000
plugins:
  dir: "plugins"
  watch: false
state_dir: "state"
feature_flags: "overlay_feature_flags.yaml"
micro_overlays_dir: "micro_overlays"
environment: "production"
limits: $limits
drain_timeout_ms: ${FH_TEST_DRAIN_MS:-1500}
# The stub follows every directive, so overlaid answers are several times
# the baseline's tokens: the token gate would trip after a few requests.
# Tests that are not about the gates lift it (test_gates sets its own).
overlays:
  refund_lot_switch: { budget: $budget }
  state_model_first: { budget: $budget }
${FH_TEST_OVERLAYS_EXTRA:-}
YAML
    echo "$dir/fusion-host.yaml"
}

# start_daemon CONFIG: runs `fusion-host serve` in the background. A test
# that measures the daemon's RSS sets FH_TEST_MEASURES_MEMORY=1: under ASan
# the allocator's quarantine keeps every freed block resident (up to 256 MB),
# which would measure ASan, not us, so that daemon runs without it.
start_daemon() {
    rm -f "$FH_TMP/ready"
    local asan=${ASAN_OPTIONS:-}
    [ -n "${FH_TEST_MEASURES_MEMORY:-}" ] && asan="${asan:+$asan:}quarantine_size_mb=0"
    ASAN_OPTIONS=$asan FH_TEST_UPSTREAM_KEY=${FH_TEST_UPSTREAM_KEY:-sk-test-secret-42} \
        "$FH_BIN" --log-level "${FH_TEST_LOG_LEVEL:-info}" serve -c "$1" \
        --ready-file "$FH_TMP/ready" >>"$FH_TMP/daemon.log" 2>&1 &
    FH_PID=$!
    if ! wait_for 15 test -s "$FH_TMP/ready"; then
        echo "daemon did not start; log:"
        cat "$FH_TMP/daemon.log"
        exit 1
    fi
    FH="http://$(sed -n 's/^listen=//p' "$FH_TMP/ready")"
}

# stop_daemon: SIGTERM and the exit status ($?).
stop_daemon() {
    [ -n "$FH_PID" ] || return 0
    kill -TERM "$FH_PID" 2>/dev/null
    wait "$FH_PID"
    local rc=$?
    FH_PID=
    return $rc
}

cleanup_daemons() {
    [ -n "$FH_PID" ] && kill -KILL "$FH_PID" 2>/dev/null
    [ -n "$LISTENER_PID" ] && kill "$LISTENER_PID" 2>/dev/null
    [ -n "$STUB_PID" ] && kill -TERM "$STUB_PID" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$FH_TMP"
}
trap cleanup_daemons EXIT

# post PATH JSON [CURL ARGS...]: POST to the daemon; body in $FH_TMP/body,
# headers in $FH_TMP/headers, status in $STATUS.
post() {
    local path=$1 json=$2
    shift 2
    STATUS=$(curl -s -o "$FH_TMP/body" -D "$FH_TMP/headers" -w '%{http_code}' \
        -H 'Content-Type: application/json' --data-binary "$json" "$@" "$FH$path")
}

# header NAME: the value of a response header of the last post.
header() {
    grep -i "^$1:" "$FH_TMP/headers" | head -1 | cut -d: -f2- | tr -d '\r' | sed 's/^ //'
}

# check NAME CONDITION-COMMAND...
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else
        not_ok "$name"
        echo "    status=${STATUS:-} body: $(head -c 600 "$FH_TMP/body" 2>/dev/null)"
    fi
}

stub_last() { curl -s "$STUB/stub/last"; }
