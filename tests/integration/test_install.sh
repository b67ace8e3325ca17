#!/usr/bin/env bash
# `cmake --install` gives what SPEC section 2 lists; the systemd unit
# verifies; the out-of-tree example overlay builds against the installed SDK
# alone (pkg-config and find_package) and passes plugin-test.
. "$(dirname "$0")/lib.sh"

P=$FH_TMP/prefix
run "cmake --install" 0 cmake --install "$FH_BINARY_DIR" --prefix "$P"
for f in bin/fusion-host lib/fusion-host/plugins/refund_lot_switch.so \
    lib/fusion-host/plugins/state_model_first.so include/fusion/overlay.h \
    lib/pkgconfig/fusion-overlay.pc lib/cmake/FusionOverlay/FusionOverlayConfig.cmake \
    lib/systemd/system/fusion-host.service etc/fusion-host/fusion-host.yaml \
    etc/fusion-host/overlay_feature_flags.yaml etc/fusion-host/emergency_baseline.yaml \
    etc/fusion-host/micro_overlays/rollback_first.md share/man/man8/fusion-host.8 \
    share/doc/fusion-host/operations.md; do
    if [ -e "$P/$f" ]; then ok "installed $f"; else not_ok "missing $f"; fi
done
if [ -e "$P/share/doc/fusion-host/fusion-host.8" ]; then not_ok "the man page is also in the doc folder"; fi
if command -v man >/dev/null; then
    # groff's warnings (man exits 0 with them): none expected.
    warn=$(man --warnings -l "$P/share/man/man8/fusion-host.8" 2>&1 >/dev/null)
    if [ -z "$warn" ]; then ok "the man page renders without warnings"; else not_ok "man page: $warn"; fi
    if MANPATH="$P/share/man" man -P cat fusion-host 2>/dev/null | grep -q '^SYNOPSIS'; then
        ok "man fusion-host finds the installed page"
    else
        not_ok "man fusion-host with MANPATH=$P/share/man"
    fi
else
    echo "# man not installed: the man page's rendering is not checked"
fi
unit=$P/lib/systemd/system/fusion-host.service
expect_unit() { if grep -q "^$1" "$unit"; then ok "unit: $1"; else not_ok "unit lacks $1"; fi; }
for k in Type=notify WatchdogSec= Restart=on-failure 'ExecReload=/bin/kill -HUP' User=fusion-host \
    StateDirectory= RuntimeDirectory= ProtectSystem=strict NoNewPrivileges=yes; do
    expect_unit "$k"
done
if grep -q "ExecStart=$P/bin/fusion-host serve" "$unit"; then ok "unit runs the installed binary"; else not_ok "ExecStart path"; fi
if command -v systemd-analyze >/dev/null; then
    run "systemd-analyze verify" 0 systemd-analyze verify "$unit"
else
    echo "# systemd-analyze not installed: verify skipped"
fi

# The example overlay, built out of tree with only the installed SDK.
cp -r "$FH_SOURCE_DIR/sdk/example" "$FH_TMP/ex"
run "example builds with pkg-config" 0 env PKG_CONFIG_PATH="$P/lib/pkgconfig" make -C "$FH_TMP/ex"
run "example builds with find_package" 0 bash -c "cmake -S '$FH_TMP/ex' -B '$FH_TMP/ex/b' -DCMAKE_PREFIX_PATH='$P' >/dev/null && cmake --build '$FH_TMP/ex/b'"
so=$(find "$FH_TMP/ex/b" -name '*.so' | head -1)
run "plugin-test on the example" 0 "$FH_BIN" plugin-test "$so"
expect "the example's evaluation is printed" 'evaluation of the sample answer'
finish
