#!/usr/bin/env bash
# The admin API and the `fusion-host` commands that use it (issue 10), as an
# operator sees them: list/status, disable/enable without a restart, the
# error answers and exit codes, operator state kept across a restart and a
# kill -9 (and a corrupt state file set aside), the TCP admin with its
# bearer token, plugins dropped into a watched folder (loaded, unloaded,
# refused, fixed; two files carrying one overlay), and a plugin that
# crashes the daemon: quarantined at the next start, naming the signal.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

start_stub
refund='{"model":"m","messages":[{"role":"user","content":"refund twice"}],"fusion":{"scenario_type":"refund_processing","confidence":0.9}}'
lifted='budget: { hook_latency_ms: 60000, token_delta_warn_pct: 100000, token_delta_max_pct: 100000, consecutive_breaches: 1000 }'
SOCK=

# cli ARGS...: the CLI against the daemon's admin socket.
cli() { "$FH_BIN" --admin "unix:$SOCK" "$@"; }
# api METHOD PATH [JSON]: a raw admin request; body in $FH_TMP/body,
# status in $STATUS.
api() {
    local data=()
    [ $# -ge 3 ] && data=(-H 'Content-Type: application/json' --data-binary "$3")
    STATUS=$(curl -s --max-time 10 --unix-socket "$SOCK" -X "$1" -o "$FH_TMP/body" \
        -w '%{http_code}' "${data[@]}" "http://admin$2")
}
# error_is STATUS CODE [MESSAGE_REGEX]: the last api answer is STATUS with
# the documented error shape {"error":{"message","type","param","code"}}
# and CODE.
error_is() {
    [ "$STATUS" = "$1" ] && jq -e --arg c "$2" --arg m "${3:-.}" \
        '(.error | keys) == ["code","message","param","type"] and .error.code == $c
         and .error.type == "invalid_request_error" and (.error.message | test($m))' \
        "$FH_TMP/body" >/dev/null
}
# overlay_field NAME JQ: a field of GET /admin/overlays/NAME.
overlay_field() {
    curl -s --max-time 5 --unix-socket "$SOCK" "http://admin/admin/overlays/$1" | jq -r "$2"
}
# field_is NAME JQ VALUE: that field of the overlay is VALUE.
field_is() { [ "$(overlay_field "$1" "$2")" = "$3" ]; }
# listed NAME [FILE_SUFFIX]: NAME is among the loaded overlays (from a file
# whose path ends with FILE_SUFFIX).
listed() {
    curl -s --max-time 5 --unix-socket "$SOCK" http://admin/admin/overlays |
        jq -e --arg n "$1" --arg f "${2:-}" \
            'any(.overlays[]; .name == $n and (.file | endswith($f)))' >/dev/null
}
unlisted() { ! listed "$@"; }
# refused FILE_SUFFIX [ERROR]: a refused file whose path ends with FILE_SUFFIX.
refused() {
    curl -s --max-time 5 --unix-socket "$SOCK" http://admin/admin/overlays |
        jq -e --arg f "$1" --arg e "${2:-}" \
            'any(.failed[]; (.file | endswith("/" + $f)) and ($e == "" or .error == $e))' >/dev/null
}
not_refused() { ! refused "$@"; }
nothing_refused() {
    curl -s --max-time 5 --unix-socket "$SOCK" http://admin/admin/overlays | jq -e '.failed == []' >/dev/null
}
# add_feature DIR NAME SCENARIO: routes SCENARIO to overlay NAME.
add_feature() {
    sed -i "s/^features:.*/features:\n  $2:\n    description: \"test overlay\"\n    enabled_overlays: []\n    rollout_percentage: 100\n    conditions:\n      scenario_types: [\"$3\"]/" \
        "$1/overlay_feature_flags.yaml"
}
# install SRC DEST: drops a plugin into the folder atomically (a hidden
# temporary name, then rename).
install_plugin() {
    local dest=$2
    cp "$1" "$(dirname "$dest")/.$(basename "$dest").tmp"
    mv "$(dirname "$dest")/.$(basename "$dest").tmp" "$dest"
}
now_ms() {
    local t=${EPOCHREALTIME//[!0-9]/}
    echo $((t / 1000))
}
# within LIMIT_MS MS CMD...: CMD holds and MS <= LIMIT_MS.
within() {
    local limit=$1 ms=$2
    shift 2
    "$@" && [ "$ms" -le "$limit" ]
}
# exited PID: the process is gone (or a zombie waiting for `wait`).
exited() { [ ! -e "/proc/$1" ] || grep -q '^[0-9]* (.*) Z' "/proc/$1/stat"; }

# --- a. list and status -------------------------------------------------
# wedge (loaded later) holds a request for 1.5 s, well inside the deadline.
FH_TEST_OVERLAYS_EXTRA="  wedge: { config: { block_ms: 1500 }, $lifted }"
cfg=$(make_config "$FH_TMP/a")
dir=$(dirname "$cfg")
printf 'hooks: { deadline_ms: 10000 }\n' >>"$cfg"
SOCK=$dir/state/admin.sock
add_feature "$dir" wedge wedge
start_daemon "$cfg"
pid1=$FH_PID
run "list" 0 cli list
expect "list: refund_lot_switch 1.0.0 enabled" '^refund_lot_switch +1\.0\.0 +enabled '
expect "list: state_model_first 1.0.0 enabled" '^state_model_first +1\.0\.0 +enabled '
run "status with -c CONFIG finds the admin socket" 0 "$FH_BIN" -c "$cfg" status
expect "status: the daemon's pid and overlay counts" "pid: +$FH_PID\$"
expect "status: 2 enabled" 'overlays: +2 enabled, 0 disabled'
run "health while all is well" 0 cli health
expect "... says ok" '^ok$'
run "list --json" 0 cli --json list
check "list --json: 2 overlays, each with a 64-hex sha256 and state enabled" python3 -c '
import json, re, sys
d = json.load(open(sys.argv[1]))
o = d["overlays"]
assert sorted(x["name"] for x in o) == ["refund_lot_switch", "state_model_first"], o
assert all(re.fullmatch("[0-9a-f]{64}", x["sha256"]) for x in o), o
assert all(x["state"] == "enabled" and x["version"] == "1.0.0" for x in o), o
assert d["failed"] == []' "$FH_TMP/out"

# --- b. disable / enable without a restart ------------------------------
run "disable refund_lot_switch" 0 cli disable refund_lot_switch
api POST /admin/overlays/refund_lot_switch/disable
check "disabling it again changes nothing: 200, changed false" \
    bash -c "[ $STATUS = 200 ] && jq -e '.state == \"disabled\" and .changed == false' '$FH_TMP/body' >/dev/null"
post /v1/chat/completions "$refund"
check "disabled: a refund request gets the baseline ($STATUS, $(header X-Fusion-Overlay), reason $(header X-Fusion-Reason))" \
    [ "$STATUS" = 200 -a "$(header X-Fusion-Overlay)" = baseline -a "$(header X-Fusion-Reason)" = disabled ]
run "list after disable" 0 cli list
expect "list: refund_lot_switch disabled" '^refund_lot_switch +1\.0\.0 +disabled '
run "enable refund_lot_switch" 0 cli enable refund_lot_switch
post /v1/chat/completions "$refund"
check "enabled again: the overlay applies ($(header X-Fusion-Overlay), $(header X-Fusion-Reason))" \
    [ "$STATUS" = 200 -a "$(header X-Fusion-Overlay)" = refund_lot_switch/1.0.0 -a "$(header X-Fusion-Reason)" = applied ]
spid=$(cli --json status | jq .pid)
check "the same daemon process throughout (pid $pid1, status says $spid)" [ "$spid" = "$pid1" ]

# --- c. refusals, exit codes and the error shape --------------------------
run "enable an unknown overlay" 1 cli enable no_such_overlay
expect "... saying which name is unknown" "no overlay named 'no_such_overlay'"
run "enable without a name: usage" 2 cli enable
run "admin API unreachable" 3 "$FH_BIN" --admin unix:/nonexistent/admin.sock list
api GET /admin/overlays/no_such_overlay
check "GET an unknown overlay: 404 overlay_not_found, error shape" error_is 404 overlay_not_found
api GET /admin/overlays/refund_lot_switch/disable
check "GET on .../disable: 405 method_not_allowed" error_is 405 method_not_allowed
api POST /admin/overlays/load '{"path":"/etc/passwd"}'
check "load /etc/passwd: 400 bad_request" error_is 400 bad_request
api POST /admin/overlays/load '{"path":"../x.so"}'
check "load ../x.so: 400 bad_request" error_is 400 bad_request
api POST /admin/overlays/load '{"nopath":1}'
check "load without a path: 400 bad_request" error_is 400 bad_request
api POST /admin/overlays/load '{"path":'
check "load with broken JSON: 400 bad_request" error_is 400 bad_request
run "CLI load of a file outside plugins.dir" 1 cli load /etc/passwd
cp "$FH_TEST_PLUGIN_DIR/bad_major.so" "$FH_TEST_PLUGIN_DIR/bad_init.so" "$dir/plugins/"
api POST /admin/overlays/load '{"path":"bad_major.so"}'
check "load of a plugin built for another ABI: 409 load_refused, saying why" \
    error_is 409 load_refused "ABI 2\\.0, this host speaks ABI 1\\.[0-9]+"
run "CLI load of a refused plugin" 1 cli load bad_init.so
expect "... with the reason" "init\(\) failed"
api POST /admin/overlays/bad_init/disable
check "disable a refused file's overlay: 409 invalid_transition" error_is 409 invalid_transition
run "CLI enable of a refused file's overlay" 1 cli enable bad_init
rm -f "$dir/plugins/bad_major.so" "$dir/plugins/bad_init.so"
# A draining overlay: unloaded while a request holds it.
cp "$FH_TEST_PLUGIN_DIR/wedge.so" "$dir/plugins/"
run "load wedge.so" 0 cli load wedge.so
curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' --max-time 10 \
    --data-binary '{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"wedge"}}' \
    "$FH/v1/chat/completions" >"$FH_TMP/wedged.status" &
wedged=$!
wait_for 5 grep -q 'wedging apply()' "$FH_TMP/daemon.log"
run "unload wedge while a request holds it" 0 cli unload wedge
expect "... it drains" 'draining'
api POST /admin/overlays/wedge/enable
check "enable a draining overlay: 409 invalid_transition" error_is 409 invalid_transition
api POST /admin/overlays/wedge/unload
check "unload it again: 409 invalid_transition" error_is 409 invalid_transition
wait $wedged
check "the request holding it finished ($(cat "$FH_TMP/wedged.status"))" [ "$(cat "$FH_TMP/wedged.status")" = 200 ]
check "and the drained overlay is gone from the list" wait_for 5 unlisted wedge
rm -f "$dir/plugins/wedge.so"

# --- d. operator state across a restart and a kill -9 --------------------
run "disable refund_lot_switch" 0 cli disable refund_lot_switch
stop_daemon
check "SIGTERM: exit 0 ($?)" [ $? = 0 ]
start_daemon "$cfg"
run "list after the restart" 0 cli list
expect "refund_lot_switch is still disabled after a restart" '^refund_lot_switch +1\.0\.0 +disabled '
post /v1/chat/completions "$refund"
check "and its requests still get the baseline ($(header X-Fusion-Reason))" \
    [ "$STATUS" = 200 -a "$(header X-Fusion-Overlay)" = baseline -a "$(header X-Fusion-Reason)" = disabled ]
run "disable state_model_first" 0 cli disable state_model_first
kill -KILL "$FH_PID"
wait "$FH_PID" 2>/dev/null
FH_PID=
start_daemon "$cfg"
run "list after kill -9" 0 cli list
expect "state_model_first is still disabled after kill -9" '^state_model_first +1\.0\.0 +disabled '
expect "refund_lot_switch too" '^refund_lot_switch +1\.0\.0 +disabled '
run "enable refund_lot_switch" 0 cli enable refund_lot_switch
run "enable state_model_first" 0 cli enable state_model_first
run "list" 0 cli list
expect "both enabled again" '2 overlays: 2 enabled, 0 disabled'

# --- e. a corrupt operator-state file ------------------------------------
run "disable refund_lot_switch" 0 cli disable refund_lot_switch
stop_daemon
printf 'garbage{{{ not json\n' >"$dir/state/operator-state.json"
start_daemon "$cfg"
post /v1/chat/completions "$refund"
check "a corrupt operator-state.json: the daemon starts and serves ($STATUS, $(header X-Fusion-Reason))" \
    [ "$STATUS" = 200 -a "$(header X-Fusion-Reason)" = applied ]
check "the log names the corrupt file" \
    grep -q "$dir/state/operator-state.json is corrupt" "$FH_TMP/daemon.log"
check "the file is set aside as operator-state.json.corrupt-*, content kept" \
    bash -c "grep -l 'garbage{{{' '$dir'/state/operator-state.json.corrupt-* >/dev/null"
run "list" 0 cli list
expect "every overlay starts enabled" '2 overlays: 2 enabled, 0 disabled'
stop_daemon

# --- f. the TCP admin with a bearer token ------------------------------------
cfg=$(make_config "$FH_TMP/f")
dir=$(dirname "$cfg")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -i "s|^  listen: \"unix:state/admin.sock\"|  listen: \"127.0.0.1:$port\"\n  token_file: \"tok\"|" "$cfg"
token=fh-admin-token-0123456789abcdef
printf '%s\n' "$token" >"$dir/tok"
chmod 644 "$dir/tok"
FH_TEST_UPSTREAM_KEY=k timeout 15 "$FH_BIN" serve -c "$cfg" --ready-file "$FH_TMP/ready.f" \
    >"$FH_TMP/refused.log" 2>&1
rc=$?
check "a token file readable by others (0644): the daemon refuses to start (exit $rc)" \
    [ "$rc" != 0 -a "$rc" != 124 ]
check "... naming admin.token_file: $(grep -m1 token_file "$FH_TMP/refused.log")" \
    grep -q 'admin.token_file' "$FH_TMP/refused.log"
printf 'short-token\n' >"$dir/tok.short"
chmod 600 "$dir/tok.short"
sed "s|token_file: \"tok\"|token_file: \"tok.short\"|" "$cfg" >"$dir/short.yaml"
FH_TEST_UPSTREAM_KEY=k timeout 15 "$FH_BIN" serve -c "$dir/short.yaml" --ready-file "$FH_TMP/ready.f" \
    >"$FH_TMP/refused.log" 2>&1
rc=$?
check "a token shorter than 16 characters: refused too (exit $rc): $(grep -m1 token_file "$FH_TMP/refused.log")" \
    [ "$rc" != 0 -a "$rc" != 124 ]
chmod 600 "$dir/tok"
start_daemon "$cfg"
A=http://127.0.0.1:$port
STATUS=$(curl -s -o "$FH_TMP/body" -w '%{http_code}' "$A/admin/overlays")
check "no token: 401 unauthorized" error_is 401 unauthorized
STATUS=$(curl -s -o "$FH_TMP/body" -w '%{http_code}' -H 'Authorization: Bearer fh-admin-token-wrong-0000000' "$A/admin/overlays")
check "a wrong token: 401 unauthorized" error_is 401 unauthorized
STATUS=$(curl -s -o "$FH_TMP/body" -w '%{http_code}' -H "Authorization: Bearer $token" "$A/admin/overlays")
check "the right token: 200 and the overlays ($STATUS)" \
    bash -c "[ $STATUS = 200 ] && jq -e '.overlays | length == 2' '$FH_TMP/body' >/dev/null"
run "CLI with --token-file" 0 "$FH_BIN" --admin "127.0.0.1:$port" --token-file "$dir/tok" list
expect "... lists the overlays" '^refund_lot_switch +1\.0\.0 +enabled '
run "CLI with -c CONFIG takes admin.token_file from it" 0 "$FH_BIN" -c "$cfg" list
run "CLI without a token: refused" 1 "$FH_BIN" --admin "127.0.0.1:$port" list
stop_daemon

# --- g. plugins dropped into a watched folder --------------------------------
FH_TEST_OVERLAYS_EXTRA=
cfg=$(make_config "$FH_TMP/g")
dir=$(dirname "$cfg")
SOCK=$dir/state/admin.sock
sed -i 's/^  watch: false/  watch: true/' "$cfg"
start_daemon "$cfg"
t0=$(now_ms)
install_plugin "$FH_TEST_PLUGIN_DIR/good_b.so" "$dir/plugins/good_b.so"
wait_for 10 listed good_b /good_b.so
dt=$(($(now_ms) - t0))
check "good_b.so dropped in: listed within 2 s (${dt} ms)" within 2000 "$dt" listed good_b /good_b.so
check "... enabled, version 1.0.0" field_is good_b '.state + " " + .version' "enabled 1.0.0"
t0=$(now_ms)
rm "$dir/plugins/good_b.so"
wait_for 10 unlisted good_b
dt=$(($(now_ms) - t0))
check "good_b.so deleted: gone from the list within 2 s (${dt} ms)" within 2000 "$dt" unlisted good_b
check "... and unloaded (its fini ran)" grep -q 'fini good_b 1.0.0' "$FH_TMP/daemon.log"
install_plugin "$FH_TEST_PLUGIN_DIR/bad_major.so" "$dir/plugins/extra.so"
check "a plugin for another ABI dropped in: listed as refused (abi_major)" wait_for 10 refused extra.so abi_major
run "list" 0 cli list
expect "... with its reason under 'Refused files'" 'extra\.so: built for overlay ABI 2\.0, this host speaks ABI 1\.[0-9]+'
install_plugin "$FH_TEST_PLUGIN_DIR/good_b.so" "$dir/plugins/extra.so"
check "replaced by a good file of the same name: it loads" wait_for 10 listed good_b /extra.so
check "... and the refusal is gone" not_refused extra.so
rm "$dir/plugins/extra.so"
wait_for 10 unlisted good_b

# --- i. two files carrying one overlay (before h, whose daemon dies) ------
install_plugin "$FH_TEST_PLUGIN_DIR/good_a.so" "$dir/plugins/a.so"
check "good_a from a.so loads" wait_for 10 listed good_a /a.so
install_plugin "$FH_TEST_PLUGIN_DIR/good_a.so" "$dir/plugins/a_copy.so"
check "a copy (same name and version) as a_copy.so: refused as duplicate" wait_for 10 refused a_copy.so duplicate
check "... while a.so keeps serving" listed good_a /a.so
run "list" 0 cli list
expect "... the refusal names the file serving it" "a_copy\.so: .*good_a.* already loaded from .*/a\.so"
t0=$(now_ms)
rm "$dir/plugins/a.so"
wait_for 10 listed good_a /a_copy.so
dt=$(($(now_ms) - t0))
check "a.so deleted: a_copy.so takes over within 2 s (${dt} ms)" within 2000 "$dt" listed good_a /a_copy.so
check "... enabled" field_is good_a .state enabled
check "... and nothing refused any more" nothing_refused
install_plugin "$FH_TEST_PLUGIN_DIR/good_a_v2.so" "$dir/plugins/b.so"
check "good_a 2.0.0 dropped in as b.so: the one loaded last serves" \
    wait_for 10 field_is good_a '.version + " " + .file' "2.0.0 $dir/plugins/b.so"
rm "$dir/plugins/b.so"
check "b.so deleted: a_copy.so (1.0.0) serves again" \
    wait_for 10 field_is good_a '.version + " " + .file' "1.0.0 $dir/plugins/a_copy.so"
stop_daemon
check "SIGTERM after the drop-ins: exit 0 ($?)" [ $? = 0 ]

# --- h. a plugin that crashes the daemon -----------------------------------
FH_TEST_OVERLAYS_EXTRA="  crasher: { $lifted }"
cfg=$(make_config "$FH_TMP/h")
dir=$(dirname "$cfg")
SOCK=$dir/state/admin.sock
cp "$FH_TEST_PLUGIN_DIR/crasher.so" "$dir/plugins/"
add_feature "$dir" crasher 'crash", "crash_stack'
crash='{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"crash"}}'
start_daemon "$cfg"
pid=$FH_PID
post /v1/chat/completions "$crash" --max-time 10
check "the crashing request gets no answer ($STATUS)" [ "$STATUS" = 000 ]
check "the daemon dies" wait_for 20 exited "$pid"
wait "$pid" 2>/dev/null
rc=$?
FH_PID=
if [ -z "${FH_SANITIZE:-}" ]; then
    check "... of SIGSEGV, re-raised (exit status $rc)" [ "$rc" = 139 ]
else
    check "... (exit status $rc under $FH_SANITIZE)" [ "$rc" != 0 ]
fi
check "it said which overlay crashed" grep -q 'fatal signal in overlay crasher apply()' "$FH_TMP/daemon.log"
start_daemon "$cfg" # as systemd's Restart=on-failure would
run "list after the restart" 0 cli list
expect "crasher is quarantined" '^crasher +1\.0\.0 +quarantined '
expect "... the reason names SIGSEGV in apply()" 'reason: crashed the daemon with SIGSEGV in apply\(\)'
check "GET /admin/overlays/crasher: quarantined, reason with SIGSEGV" \
    field_is crasher '.state + " " + (.reason | test("SIGSEGV") | tostring)' "quarantined true"
run "health with an overlay quarantined: not ok" 1 cli health
expect "... degraded" 'degraded'
post /v1/chat/completions "$refund"
check "the other overlay still applies ($(header X-Fusion-Overlay), $(header X-Fusion-Reason))" \
    [ "$STATUS" = 200 -a "$(header X-Fusion-Overlay)" = refund_lot_switch/1.0.0 -a "$(header X-Fusion-Reason)" = applied ]
post /v1/chat/completions "$crash"
check "a crash request now gets the baseline ($STATUS, $(header X-Fusion-Overlay), reason $(header X-Fusion-Reason))" \
    [ "$STATUS" = 200 -a "$(header X-Fusion-Overlay)" = baseline -a "$(header X-Fusion-Reason)" = quarantined ]
stop_daemon
start_daemon "$cfg"
check "still quarantined after a further restart" field_is crasher .state quarantined
run "enable crasher" 0 cli enable crasher
check "crasher enabled" field_is crasher .state enabled

# A hook that recurses until its stack overflows: the handler runs on its
# own stack, so this crash is recorded too.
pid=$FH_PID
post /v1/chat/completions '{"model":"m","messages":[{"role":"user","content":"x"}],"fusion":{"scenario_type":"crash_stack"}}' --max-time 10
check "a stack overflow in apply() kills the daemon" wait_for 20 exited "$pid"
wait "$pid" 2>/dev/null
FH_PID=
check "... and says which overlay" grep -q 'fatal signal in overlay crasher apply()' "$FH_TMP/daemon.log"
start_daemon "$cfg"
check "after the stack overflow: crasher quarantined, SIGSEGV in apply()" \
    field_is crasher '.state + " " + (.reason | test("SIGSEGV in apply") | tostring)' "quarantined true"
stop_daemon
check "SIGTERM: exit 0 ($?)" [ $? = 0 ]

# A crash while the plugin loads (init()) would repeat at every start: that
# file is refused by its content from then on, and the daemon serves.
FH_TEST_OVERLAYS_EXTRA="  crasher: { config: { crash_in: \"init\" }, $lifted }"
cfg=$(make_config "$FH_TMP/h3")
dir=$(dirname "$cfg")
SOCK=$dir/state/admin.sock
cp "$FH_TEST_PLUGIN_DIR/crasher.so" "$dir/plugins/"
add_feature "$dir" crasher crash
"$FH_BIN" serve -c "$cfg" >>"$FH_TMP/daemon.log" 2>&1 &
pid=$!
check "a crash in init() kills the starting daemon" wait_for 20 exited "$pid"
wait "$pid" 2>/dev/null
check "... and says so" grep -q 'fatal signal in overlay crasher init()' "$FH_TMP/daemon.log"
start_daemon "$cfg"
ok "the next start serves (no restart loop)"
run "list" 0 cli list
expect "the file is refused as quarantined, with the reason" \
    'crasher.so: quarantined: crashed the daemon with SIGSEGV in init\(\)'
check "GET /admin/overlays lists the persisted refusal" bash -c \
    "curl -s --unix-socket '$SOCK' http://x/admin/overlays | jq -e '.persisted | any(.name == \"crasher\" and .state == \"refused_file\")' >/dev/null"
check "refund_lot_switch serves meanwhile" field_is refund_lot_switch .state enabled
stop_daemon
start_daemon "$cfg"
check "still refused after another restart" bash -c \
    "curl -s --unix-socket '$SOCK' http://x/admin/overlays | jq -e 'any(.failed[]; .error == \"quarantined\")' >/dev/null"
# The operator fixes the config, then enables it: the same file loads.
sed -i 's/crash_in: "init"/crash_in: "never"/' "$cfg"
run "reload with the fixed config" 0 cli reload
run "enable crasher" 0 cli enable crasher
check "crasher loads once enabled" field_is crasher .state enabled
stop_daemon
check "SIGTERM: exit 0 ($?)" [ $? = 0 ]
finish
