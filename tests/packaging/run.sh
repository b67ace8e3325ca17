#!/usr/bin/env bash
# The Debian packages end to end (CI's packaging step): builds fusion-host
# and fusion-host-dev from a copy of this tree with packaging/debian/ as
# ./debian (`dpkg-buildpackage -us -uc -b`), checks their file lists and
# lintian (no errors), installs both (`apt-get install`), starts the daemon
# from the installed files as the packaged user against the installed stub
# model, builds the example overlay against the installed SDK alone
# (pkg-config and find_package, outside the source tree) and runs
# `plugin-test` on it, then purges both. The machine is left as it was:
# the packages purged, the fusion-host user removed if this run made it.
#
#   tests/packaging/run.sh                # everything; as root
#   tests/packaging/run.sh --build-only   # build, file lists, lintian; any user
#   tests/packaging/run.sh --out DIR      # also copy the .deb files to DIR
#
# The copy holds what git tracks plus untracked files it does not ignore
# (so uncommitted changes are packaged); build folders never go in.
# Packages come from packaging/debian/; the test suite is not run in the
# package build (.ci/run runs it).
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
say() { echo "--- $* ($(($(date +%s) - start))s)"; }
fail() {
    echo "packaging: FAILED: $*" >&2
    exit 1
}

build_only=0
out=
while [ $# -gt 0 ]; do
    case $1 in
    --build-only) build_only=1 ;;
    --out)
        [ $# -ge 2 ] || fail "--out needs a folder"
        out=$2
        shift
        ;;
    *) fail "unknown argument '$1' (--build-only, --out DIR)" ;;
    esac
    shift
done

for tool in dpkg-buildpackage dh lintian; do
    command -v "$tool" >/dev/null ||
        fail "$tool is missing: bash scripts/deps.sh --packaging installs the packaging tools"
done
if [ $build_only -eq 0 ]; then
    [ "$(id -u)" -eq 0 ] || fail "installing the packages needs root (or use --build-only)"
    for p in fusion-host fusion-host-dev; do
        if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ]; then
            fail "$p is installed on this machine; this test installs and purges it: remove it first"
        fi
    done
fi

version=$(sed -n 's/^project(fusion-host VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
[ -n "$version" ] || fail "no project(fusion-host VERSION ...) in CMakeLists.txt"
W=$(mktemp -d "${TMPDIR:-/tmp}/fh-pkg-XXXXXX")
chmod 755 "$W" # the daemon runs as the packaged user and reads its config here
TREE=$W/fusion-host-$version
INSTALLED=0
USER_MADE=0
STUB_PID=
FH_PID=

cleanup() {
    local rc=$?
    set +e
    [ -n "$FH_PID" ] && kill -KILL "$FH_PID" 2>/dev/null
    [ -n "$STUB_PID" ] && kill -TERM "$STUB_PID" 2>/dev/null
    wait 2>/dev/null
    if [ $INSTALLED -eq 1 ]; then
        echo "packaging: purging the packages after a failure" >&2
        apt-get purge -y -qq fusion-host fusion-host-dev >/dev/null 2>&1 || true
    fi
    if [ $USER_MADE -eq 1 ] && getent passwd fusion-host >/dev/null; then
        userdel fusion-host 2>/dev/null
        getent group fusion-host >/dev/null && groupdel fusion-host 2>/dev/null
    fi
    rm -rf "$W"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS CMD...: polls CMD until it succeeds; 1 on timeout.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.05
    done
}

# has_files DEB PATH...: each PATH (as dpkg -c prints it, ./...) is in DEB.
has_files() {
    local deb=$1 list
    shift
    list=$(dpkg -c "$deb" | awk '{print $6}')
    for f in "$@"; do
        grep -qxF -- "$f" <<<"$list" || fail "$(basename "$deb") lacks $f"
    done
    echo "$(basename "$deb"): $(grep -vc '/$' <<<"$list") files, the ${#@} checked present"
}

say "the source tree, with packaging/debian as debian/"
mkdir -p "$TREE"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Files deleted but not yet committed are skipped.
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -xf - -C "$TREE"
else
    tar --exclude=./.git --exclude='./build*' -cf - . | tar -xf - -C "$TREE"
fi
rm -rf "$TREE/debian"
cp -a "$TREE/packaging/debian" "$TREE/debian"

say "dpkg-buildpackage -us -uc -b -j2"
if ! (cd "$TREE" && DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}" \
    dpkg-buildpackage -us -uc -b -j2 >"$W/build.log" 2>&1); then
    tail -n 60 "$W/build.log"
    fail "dpkg-buildpackage (the last 60 lines of its log are above)"
fi
DEB=$(ls "$W"/fusion-host_"$version"-*_*.deb)
DEV=$(ls "$W"/fusion-host-dev_"$version"-*_*.deb)
MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH)

say "file lists (dpkg -c)"
has_files "$DEB" ./usr/bin/fusion-host ./usr/bin/fusion-stub-llm \
    ./usr/lib/fusion-host/plugins/refund_lot_switch.so \
    ./usr/lib/fusion-host/plugins/state_model_first.so \
    ./lib/systemd/system/fusion-host.service ./usr/lib/sysusers.d/fusion-host.conf \
    ./etc/fusion-host/fusion-host.yaml ./etc/fusion-host/overlay_feature_flags.yaml \
    ./etc/fusion-host/emergency_baseline.yaml ./etc/fusion-host/micro_overlays/rollback_first.md \
    ./usr/share/man/man8/fusion-host.8.gz ./usr/share/doc/fusion-host/operations.md \
    ./usr/share/doc/fusion-host/copyright \
    ./usr/share/fusion-host/prometheus/fusion-host.rules.yml \
    ./usr/share/fusion-host/grafana/fusion-host.json
has_files "$DEV" ./usr/include/fusion/overlay.h \
    "./usr/lib/$MA/pkgconfig/fusion-overlay.pc" \
    "./usr/lib/$MA/cmake/FusionOverlay/FusionOverlayConfig.cmake" \
    "./usr/lib/$MA/cmake/FusionOverlay/FusionOverlayConfigVersion.cmake" \
    ./usr/share/doc/fusion-host-dev/examples/concise_answer.c \
    ./usr/share/doc/fusion-host-dev/examples/CMakeLists.txt \
    ./usr/share/doc/fusion-host-dev/examples/Makefile \
    ./usr/share/doc/fusion-host-dev/example
if dpkg -c "$DEB" | grep -q '/include/\|\.pc$\|test_'; then fail "$(basename "$DEB") holds SDK or test files"; fi
if dpkg -c "$DEV" | grep -q '/bin/\|\.so$'; then fail "$(basename "$DEV") holds programs or plugins"; fi
conffiles=$(dpkg-deb -I "$DEB" conffiles)
for f in /etc/fusion-host/fusion-host.yaml /etc/fusion-host/overlay_feature_flags.yaml; do
    grep -qxF "$f" <<<"$conffiles" || fail "$f is not a conffile"
done
echo "conffiles: $(wc -l <<<"$conffiles") under /etc/fusion-host"

say "lintian (errors fail; warnings listed)"
lint=0
lintian --fail-on error --tag-display-limit 0 "$W"/fusion-host_"$version"-*.changes \
    >"$W/lintian.out" 2>&1 || lint=$?
grep -v 'running with root privileges' "$W/lintian.out" || echo "(no tags)"
[ $lint -eq 0 ] || fail "lintian reports errors (exit $lint)"

if [ -n "$out" ]; then
    mkdir -p "$out"
    cp "$DEB" "$DEV" "$out/"
    echo "copied $(basename "$DEB") and $(basename "$DEV") to $out"
fi
if [ $build_only -eq 1 ]; then
    say "done (--build-only)"
    exit 0
fi

say "apt-get install the two packages"
getent passwd fusion-host >/dev/null || USER_MADE=1
INSTALLED=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$DEB" "$DEV" \
    >"$W/apt.log" 2>&1 || {
    cat "$W/apt.log"
    fail "apt-get install"
}
getent passwd fusion-host >/dev/null || fail "postinst made no fusion-host user"
[ -L /etc/systemd/system/multi-user.target.wants/fusion-host.service ] ||
    fail "the unit was not enabled"
/usr/bin/fusion-host --version | grep -qF "fusion-host $version" || fail "fusion-host --version"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/fusion-host.service ||
        fail "systemd-analyze verify of the installed unit"
fi
/usr/bin/fusion-host check --user fusion-host -c /etc/fusion-host/fusion-host.yaml >"$W/check.out" ||
    {
        cat "$W/check.out"
        fail "fusion-host check of the installed configuration"
    }
echo "user fusion-host made, unit enabled, unit verifies, installed config checks"
# `man fusion-host` finds the package's page and it renders without groff
# warnings. Rendered by path: man-db would cache a formatted copy of a
# looked-up page, and a rebuild with the same changelog date (the files'
# mtime) would show the stale copy next time.
page=$(man -w fusion-host 2>/dev/null) || fail "man fusion-host: no manual entry"
[ "$page" = /usr/share/man/man8/fusion-host.8.gz ] || fail "man fusion-host finds $page"
warn=$(man --warnings -P cat -l "$page" 2>&1 >/dev/null)
[ -z "$warn" ] || fail "man fusion-host: $warn"
man -P cat -l "$page" | grep -q 'fusion-host - LLM overlay gateway' || fail "man fusion-host renders no NAME"
echo "man fusion-host: $page, $(man -P cat -l "$page" | wc -l) lines, no groff warnings"

say "the installed daemon, as user fusion-host, against the installed stub"
R=$W/run
mkdir -p "$R/state"
cp -r /etc/fusion-host/. "$R/"
cfg=$R/fusion-host.yaml
/usr/bin/fusion-stub-llm --listen 127.0.0.1:0 --port-file "$W/stub.port" --quiet >"$W/stub.log" 2>&1 &
STUB_PID=$!
wait_for 10 test -s "$W/stub.port" || fail "the stub model did not start: $(cat "$W/stub.log")"
stub_url="http://127.0.0.1:$(cat "$W/stub.port")/v1"
# The shipped config with a free port, this folder's state and admin socket,
# and the stub upstream; plugins stay /usr/lib/fusion-host/plugins.
sed -i -E \
    -e 's|^listen: .*|listen: "127.0.0.1:0"|' \
    -e "s|^(  listen: )\"unix:/run/fusion-host/admin.sock\"|\1\"unix:$R/state/admin.sock\"|" \
    -e "s|^(  base_url: ).*|\1\"$stub_url\"|" \
    -e 's|^state_dir: .*|state_dir: "state"|' "$cfg"
for k in 'listen: "127.0.0.1:0"' "unix:$R/state/admin.sock" "$stub_url" 'state_dir: "state"' \
    'dir: "/usr/lib/fusion-host/plugins"'; do
    grep -qF -- "$k" "$cfg" || fail "the derived config lacks $k (did config/fusion-host.yaml change shape?)"
done
chown -R fusion-host:fusion-host "$R"
as_daemon=(setpriv --reuid=fusion-host --regid=fusion-host --init-groups)
"${as_daemon[@]}" /usr/bin/fusion-host check -c "$cfg" >"$W/check.out" || {
    cat "$W/check.out"
    fail "check of the derived config"
}
# env and setpriv exec: $! is the daemon itself.
env FUSION_UPSTREAM_API_KEY=sk-packaging-test "${as_daemon[@]}" /usr/bin/fusion-host serve \
    -c "$cfg" --ready-file "$R/ready" >"$W/daemon.log" 2>&1 &
FH_PID=$!
wait_for 15 test -s "$R/ready" || {
    cat "$W/daemon.log"
    fail "the installed daemon did not start (its log is above)"
}
FH="http://$(sed -n 's/^listen=//p' "$R/ready")"
health=$(curl -s -o "$W/health" -w '%{http_code}' "$FH/health")
[ "$health" = 200 ] || fail "/health answered $health: $(cat "$W/health")"
echo "/health: 200 $(head -c 80 "$W/health")..."
status=$(curl -s -o "$W/body" -D "$W/headers" -w '%{http_code}' "$FH/v1/chat/completions" \
    -H 'Content-Type: application/json' --data-binary \
    '{"model":"stub","messages":[{"role":"user","content":"Order 4411 was refunded twice."}],
      "fusion":{"scenario_type":"refund_processing_duplicate","confidence":0.9}}')
overlay=$(grep -i '^X-Fusion-Overlay:' "$W/headers" | cut -d: -f2- | tr -d '\r ')
[ "$status" = 200 ] || fail "chat completion answered $status: $(head -c 400 "$W/body")"
case $overlay in
refund_lot_switch/*) echo "chat completion: 200, X-Fusion-Overlay: $overlay" ;;
*) fail "chat completion was served by '$overlay', not refund_lot_switch ($(cat "$W/headers"))" ;;
esac
/usr/bin/fusion-host --admin "unix:$R/state/admin.sock" list >"$W/list.out" ||
    fail "fusion-host list: exit $?: $(cat "$W/list.out")"
grep -q '^state_model_first .*enabled' "$W/list.out" || fail "list: $(cat "$W/list.out")"
echo "fusion-host list: $(awk '$3 ~ /^(enabled|disabled|draining|quarantined)$/' "$W/list.out" | wc -l) overlays"
kill -TERM "$FH_PID"
rc=0
wait "$FH_PID" || rc=$?
FH_PID=
[ $rc -eq 0 ] || fail "the daemon exited $rc on SIGTERM: $(tail -n 20 "$W/daemon.log")"
echo "SIGTERM: drained, exit 0"

say "the example overlay against the installed SDK only"
E=$W/example
# The path docs/sdk.md's tutorial uses (a link to examples/).
cp -rL /usr/share/doc/fusion-host-dev/example "$E"
[ "$(pkg-config --variable=includedir fusion-overlay)" != "" ] || fail "pkg-config fusion-overlay"
env -u PKG_CONFIG_PATH -u CPATH -u C_INCLUDE_PATH make -C "$E" >"$W/make.log" 2>&1 || {
    cat "$W/make.log"
    fail "the example with pkg-config"
}
if ! { env -u CMAKE_PREFIX_PATH cmake -S "$E" -B "$E/b" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON &&
    cmake --build "$E/b"; } >"$W/cmake.log" 2>&1; then
    cat "$W/cmake.log"
    fail "the example with find_package(FusionOverlay)"
fi
found=$(sed -n 's/^FusionOverlay_DIR:PATH=//p' "$E/b/CMakeCache.txt")
[ "$found" = "/usr/lib/$MA/cmake/FusionOverlay" ] || fail "find_package found $found, not the package's"
echo "built with pkg-config ($(pkg-config --modversion fusion-overlay)) and find_package ($found)"
(cd "$E" && /usr/bin/fusion-host plugin-test "$E/b/concise_answer.so") >"$W/pt.out" 2>&1 || {
    cat "$W/pt.out"
    fail "plugin-test on the example"
}
grep -q 'evaluation of the sample answer' "$W/pt.out" || fail "plugin-test printed no evaluation"
(cd "$E" && /usr/bin/fusion-host plugin-test "$E/concise_answer.so") >/dev/null 2>&1 ||
    fail "plugin-test on the pkg-config build"
echo "plugin-test: both builds pass"

say "apt-get purge"
kill -TERM "$STUB_PID" 2>/dev/null
wait "$STUB_PID" 2>/dev/null || true
STUB_PID=
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq fusion-host fusion-host-dev >"$W/apt.log" 2>&1 || {
    cat "$W/apt.log"
    fail "apt-get purge"
}
INSTALLED=0
for p in /usr/bin/fusion-host /etc/fusion-host /usr/lib/fusion-host /usr/include/fusion \
    /etc/systemd/system/multi-user.target.wants/fusion-host.service; do
    [ ! -e "$p" ] || fail "$p is left after the purge"
done
say "done: built, checked, installed, served, example built, purged"
