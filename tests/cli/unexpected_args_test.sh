#!/usr/bin/env bash
# Every `xkv` command on a word it does not expect (issue 16): exit status 2, exactly one line on
# stderr naming the word, nothing on stdout, and nothing started (the serving commands would
# otherwise listen and never return; the ctest timeout catches that). `--help` still exits 0.
# Usage: unexpected_args_test.sh XKV_BINARY
set -uo pipefail
xkv=${1:?xkv binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

# shellcheck source=tests/cli/expect_error.sh
source "$(dirname "$0")/expect_error.sh"
# expect_rejected WORD ARGS...: `xkv ARGS...` must reject WORD with exit status 2.
expect_rejected() {
  local word=$1
  shift
  expect_error_from 2 "unexpected argument '$word'" timeout 20 "$xkv" "$@"
}

expect_rejected stray generate --model none.gguf --prompt hi stray
expect_rejected words generate --prompt two words --max-tokens 4
expect_rejected -v generate -v
expect_rejected stray eval stray
expect_rejected stray worker --listen 127.0.0.1:0 stray
expect_rejected stray serve --listen 127.0.0.1:0 stray
expect_rejected stray coordinator --workers 127.0.0.1:1 stray
expect_rejected stray client generate --server 127.0.0.1:1 stray
expect_rejected stray client admin config --server 127.0.0.1:1 stray
expect_rejected stray bench cpu stray
expect_rejected stray bench gpu stray
expect_rejected stray bench serve --server 127.0.0.1:1 stray
# A flag value outside its set: the same one line, naming the flag, the value and the choices.
for command in serve "coordinator --workers 127.0.0.1:1"; do
  # shellcheck disable=SC2086  # the command's words are meant to split
  expect_error_from 2 "--kv-admission: unknown KV admission policy 'most'; use guaranteed_no_evict or max_utilization" \
    timeout 20 "$xkv" $command --kv-admission most
done

for command in generate eval worker serve coordinator "client generate" "bench cpu"; do
  # shellcheck disable=SC2086  # the command's words are meant to split
  if ! timeout 20 "$xkv" $command --help > "$tmp/out" 2>&1 || ! grep -q "^usage: xkv" "$tmp/out"; then
    echo "FAIL: xkv $command --help did not print its usage and exit 0"
    failed=1
  fi
done
exit $failed
