#!/usr/bin/env bash
# Installs the Debian packages fusion-host needs to build and test, when
# something is missing. As root it runs apt-get; otherwise it prints the exact
# command and fails, so a user knows what to do.
#   scripts/deps.sh               # build and test
#   scripts/deps.sh --packaging   # also build, lint and try the .deb files
#                                 # (tests/packaging/run.sh, CI)
set -euo pipefail

# prometheus: its promtool checks and unit-tests packaging/prometheus/ (the
# only Debian package that ships promtool; installed without recommends, the
# server is never started by the tests). python3-yaml: test_dashboards reads
# the alert rules.
FH_PACKAGES=(cmake gcc clang make pkg-config libyaml-dev libjansson-dev libmicrohttpd-dev
    libsystemd-dev libcmocka-dev libcurl4-openssl-dev curl jq python3 python3-yaml prometheus)
# Packaging (packaging/debian, built with dpkg-buildpackage): debhelper also
# provides dh-sequence-installsysusers; man-db for `man fusion-host` once
# the package is installed. No fakeroot: the build declares
# Rules-Requires-Root: no.
if [ "${1:-}" = "--packaging" ]; then
    FH_PACKAGES+=(dpkg-dev debhelper lintian man-db)
elif [ $# -gt 0 ]; then
    echo "deps: unknown argument '$1' (--packaging)" >&2
    exit 2
fi

missing=()
for p in "${FH_PACKAGES[@]}"; do
    # ${db:Status-Status} is "installed" only for a fully installed package.
    if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    echo "deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "deps: missing packages; run:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
