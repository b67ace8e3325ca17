#!/usr/bin/env bash
# docs/sdk.md's tutorial, run as written: the blocks between <!-- tutorial -->
# markers, in order, as one script, by an overlay author who has only the
# installed SDK (`cmake --install` into a prefix: headers, pkg-config) and a
# running daemon (the real one, against the stub, folder watcher on).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

P=$FH_TMP/prefix
run "the SDK installs" 0 cmake --install "$FH_BINARY_DIR" --prefix "$P"
start_stub
cfg=$(make_config "$FH_TMP/d")
dir=$(dirname "$cfg")
sed -i 's/^  watch: false/  watch: true/' "$cfg"
start_daemon "$cfg"

# The tutorial's blocks, extracted from the doc.
awk '/<!-- tutorial -->/{on=1; next} /<!-- \/tutorial -->/{on=0} on && !/^```/' \
    "$FH_SOURCE_DIR/docs/sdk.md" >"$FH_TMP/tutorial.sh"
check "the tutorial has its blocks" [ "$(grep -c . "$FH_TMP/tutorial.sh")" -gt 20 ]

mkdir -p "$FH_TMP/author"
run "the tutorial runs, every command succeeding" 0 env -C "$FH_TMP/author" \
    PLUGINS="$dir/plugins" FLAGS="$dir/overlay_feature_flags.yaml" \
    EXAMPLE="$FH_SOURCE_DIR/sdk/example" \
    FH="$FH_BIN" FUSION_HOST_ADMIN="unix:$dir/state/admin.sock" URL="$FH" \
    PKG_CONFIG_PATH="$P/lib/pkgconfig" bash -e "$FH_TMP/tutorial.sh"
cat "$FH_TMP/out"
expect "plugin-test judged the overlay" 'evaluation of the sample answer'
expect "list shows it loaded by the watcher" '^short_answer +1\.0\.0 +enabled '
expect "a request is served by it" '^X-Fusion-Overlay: short_answer/1\.0\.0'
expect "... applied" '^X-Fusion-Reason: applied'
expect "after the hot swap, list shows 1.1.0" '^short_answer +1\.1\.0 +enabled '
expect "disabled: the baseline serves" '^X-Fusion-Reason: disabled'
expect "enabled again" '^short_answer: enabled'
check "the daemon logged the swap" grep -q 'overlay short_answer: swapped 1.0.0 -> 1.1.0' "$FH_TMP/daemon.log"
finish
