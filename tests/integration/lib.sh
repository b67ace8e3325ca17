# Shared helpers for the integration tests (sourced). Each test counts its
# checks and ends with "N passed, N failed"; any failure makes it exit 1.
set -u
: "${FH_BIN:?run through ctest}" "${FH_SOURCE_DIR:?}" "${FH_PLUGIN_DIR:?}"
FH_PASSED=0
FH_FAILED=0
FH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/fh-it-XXXXXX")
trap 'rm -rf "$FH_TMP"' EXIT

ok() { FH_PASSED=$((FH_PASSED + 1)); echo "ok - $*"; }
# A check this build cannot make (it runs in the others): said, not counted.
skip() { echo "skip - $*"; }
not_ok() { FH_FAILED=$((FH_FAILED + 1)); echo "not ok - $*"; }

# run NAME EXPECTED_EXIT CMD...: runs CMD, output in $FH_TMP/out, checks exit.
run() {
    local name=$1 want=$2
    shift 2
    "$@" >"$FH_TMP/out" 2>&1
    local got=$?
    if [ "$got" -eq "$want" ]; then
        ok "$name (exit $got)"
    else
        not_ok "$name: exit $got, wanted $want; output:"
        sed 's/^/    /' "$FH_TMP/out"
    fi
}

# expect NAME REGEX: the last output matches REGEX (grep -E).
expect() {
    if grep -Eq -- "$2" "$FH_TMP/out"; then
        ok "$1"
    else
        not_ok "$1: output does not match /$2/; output:"
        sed 's/^/    /' "$FH_TMP/out"
    fi
}

# A copy of config/ whose plugins.dir is the build's plugin folder, so the
# tests do not depend on the build folder's name. Prints the config path.
config_copy() {
    local dir=$FH_TMP/config.$RANDOM
    cp -r "$FH_SOURCE_DIR/config" "$dir"
    mkdir -p "$dir/plugins"
    chmod 755 "$dir/plugins"
    cp "$FH_PLUGIN_DIR"/*.so "$dir/plugins/"
    sed -i -E "s|^([[:space:]]*dir:).*|\1 \"plugins\"|" "$dir/fusion-host.dev.yaml"
    echo "$dir/fusion-host.dev.yaml"
}

finish() {
    if [ "$FH_FAILED" -gt 0 ] && [ -s "$FH_TMP/daemon.log" ]; then
        echo "--- the daemon's log (last 60 lines) ---"
        tail -n 60 "$FH_TMP/daemon.log"
    fi
    echo "$FH_PASSED passed, $FH_FAILED failed"
    [ "$FH_FAILED" -eq 0 ]
    exit $?
}
