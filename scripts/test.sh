#!/usr/bin/env bash
# README's test command: installs missing build packages (as root), configures
# with warnings as errors, builds and runs every test with cmocka's output.
# BUILD_DIR and extra cmake arguments can be given:
#   scripts/test.sh                          # build/, RelWithDebInfo
#   BUILD_DIR=build-asan scripts/test.sh -DFH_SANITIZE=address,undefined
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DFH_WERROR=ON "$@" >/dev/null
cmake --build "$BUILD_DIR" -j2
CMOCKA_MESSAGE_OUTPUT=stdout ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 \
    ${CTEST_ARGS:-}
