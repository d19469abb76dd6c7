#!/usr/bin/env bash
# Step and memory flags of `xkv serve` and `xkv worker` (issue 13 part 4, issue 14 part 6): a bad
# --max-batched-tokens, a --step-tokens (its old name) that disagrees with it, a
# --gpu-memory-utilization outside (0, 1], an --async-decode other than auto, on, off or a
# --reconstruct-chunk outside [64, 8192] stops the start with exit status 2 and one line naming
# the flag, before anything loads or listens (exit status 1 for the worker, as its other start-up
# checks). The old names still work.
# Usage: serve_flags_test.sh XKV_BINARY
set -uo pipefail
xkv=${1:?xkv binary}
failed=0

# shellcheck source=tests/cli/expect_error.sh
source "$(dirname "$0")/expect_error.sh"
listen=(--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --admin-insecure-local)

expect_error_from 2 "--max-batched-tokens must be >= 1, got 0" \
  timeout 20 "$xkv" serve "${listen[@]}" --max-batched-tokens 0
expect_error_from 2 "--step-tokens 600 and --max-batched-tokens 700 disagree" \
  timeout 20 "$xkv" serve "${listen[@]}" --step-tokens 600 --max-batched-tokens 700
expect_error_from 2 "--max-batched-tokens must be >= 1, got -5" \
  timeout 20 "$xkv" serve "${listen[@]}" --step-tokens -5
for bad in 0 1.5 -0.2; do
  expect_error_from 2 "--gpu-memory-utilization must be in (0, 1]" \
    timeout 20 "$xkv" serve "${listen[@]}" --device cuda:0 --gpu-memory-utilization "$bad"
  expect_error_from 1 "--gpu-memory-utilization must be in (0, 1]" \
    timeout 20 "$xkv" worker --listen 127.0.0.1:0 --gpu-memory-utilization "$bad"
done
expect_error_from 2 "--async-decode 'maybe' is not one of auto, on, off" \
  timeout 20 "$xkv" serve "${listen[@]}" --async-decode maybe
for dev in cpu cuda:0; do  # the same range whatever the default of the device
  expect_error_from 2 "--reconstruct-chunk 10 is out of range [64, 8192]" \
    timeout 20 "$xkv" serve "${listen[@]}" --device "$dev" --reconstruct-chunk 10
done
expect_error_from 1 "cap is 0.5; it must be in [1, 64]" \
  timeout 20 "$xkv" serve "${listen[@]}" --cap 0.5
expect_error_from 1 "--max-step-tokens and --max-batched-tokens disagree" \
  timeout 20 "$xkv" worker --listen 127.0.0.1:0 --max-step-tokens 64 --max-batched-tokens 128
expect_error_from 1 "--max-batched-tokens must be >= 1" \
  timeout 20 "$xkv" worker --listen 127.0.0.1:0 --max-step-tokens -1
# The old names alone still start (a worker waits for LoadStage: stopped once it listens).
log=$(mktemp)
timeout 10 "$xkv" worker --listen 127.0.0.1:0 --max-step-tokens 64 2> "$log" &
pid=$!
for _ in $(seq 100); do grep -q "waiting for LoadStage" "$log" && break; sleep 0.1; done
if grep -q "waiting for LoadStage" "$log"; then
  echo "ok: worker --max-step-tokens 64 starts"
else
  echo "FAIL: worker --max-step-tokens 64 did not start:"
  sed 's/^/    /' "$log" | head -5
  failed=1
fi
kill "$pid" 2> /dev/null
wait "$pid" 2> /dev/null
rm -f "$log"
exit $failed
