#!/usr/bin/env bash
# The official OpenAI Node SDK (npm package `openai`, v4) drives the daemon:
# a completion with its request id, a stream with stream_options null, a
# stream the upstream cuts (the SDK's APIError), a 429 with Retry-After
# (RateLimitError), a gateway-made 400 (BadRequestError with code and
# param), models.list and embeddings through the same base URL. The package
# is installed once into the build folder from the npm registry; without
# node/npm or the registry the checks are reported as skipped, not passed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/daemon_lib.sh"

sdk=$FH_BINARY_DIR/openai-sdk
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    skip "node and npm are not installed: the official SDK cannot run here"
    finish
fi
if [ ! -d "$sdk/node_modules/openai" ]; then
    mkdir -p "$sdk"
    (cd "$sdk" && npm init -y >/dev/null 2>&1 && timeout 180 npm install --no-audit --no-fund openai@4 >/dev/null 2>&1) ||
        { skip "npm could not install openai@4 (no registry?)"; rm -rf "$sdk/node_modules"; finish; }
fi
cp "$FH_SOURCE_DIR/tests/sdk/openai_node_check.mjs" "$sdk/"
start_stub
FH_TEST_TIMEOUT_MS=2000
start_daemon "$(make_config "$FH_TMP/d")"
(cd "$sdk" && timeout 60 node openai_node_check.mjs "$FH") >"$FH_TMP/sdk.out" 2>&1
rc=$?
cat "$FH_TMP/sdk.out"
FH_PASSED=$((FH_PASSED + $(grep -c '^ok - ' "$FH_TMP/sdk.out")))
FH_FAILED=$((FH_FAILED + $(grep -c '^NOT OK - ' "$FH_TMP/sdk.out")))
check "the SDK script ran to its end (exit $rc)" [ "$rc" = 0 ]
finish
