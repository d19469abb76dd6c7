#!/usr/bin/env bash
# Step and memory flags of `xkv serve` and `xkv worker` (issue 13 part 4, issue 14 part 6): a bad
# --max-batched-tokens, a --step-tokens (its old name) that disagrees with it, a
# --gpu-memory-utilization outside (0, 1], an --async-decode other than auto, on, off or a
# --reconstruct-chunk outside [64, 8192] stops the start with exit status 2 and one line naming
# the flag, before anything loads or listens (exit status 1 for the worker, as its other start-up
# checks). The old names still work. A started server states its step sizes in one line: on CPU
# stages by default 512-token steps, a prompt's chunk the whole step (--prefill-chunk 0), and the
# re-reading chunk fit to a step after the repeat instruction (SmolLM2's: 27 tokens). `xkv
# coordinator` takes the defaults of its workers' devices and says which.
# Usage: serve_flags_test.sh XKV_BINARY MODEL.gguf
set -uo pipefail
xkv=${1:?xkv binary}
model=${2:?model}
failed=0

# shellcheck source=tests/cli/expect_error.sh
source "$(dirname "$0")/expect_error.sh"
listen=(--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --admin-insecure-local)

expect_error_from 2 "--max-batched-tokens must be >= 1 (or 0: the device's default), got -3" \
  timeout 20 "$xkv" serve "${listen[@]}" --max-batched-tokens -3
expect_error_from 2 "--step-tokens 600 and --max-batched-tokens 700 disagree" \
  timeout 20 "$xkv" serve "${listen[@]}" --step-tokens 600 --max-batched-tokens 700
expect_error_from 2 "--max-batched-tokens must be >= 1 (or 0: the device's default), got -5" \
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
# expect_started READY WANT CMD...: CMD (a server, run in the background) prints the line READY
# on stderr within 30 s, and its stderr then holds WANT; it is stopped after.
expect_started() {
  local ready=$1 want=$2 log pid
  shift 2
  log=$(mktemp)
  "$@" 2> "$log" &
  pid=$!
  for _ in $(seq 300); do grep -q -- "$ready" "$log" && break; sleep 0.1; done
  if grep -q -- "$ready" "$log" && grep -qF -- "$want" "$log"; then
    echo "ok: $want"
  else
    echo "FAIL: $* did not start with \"$want\":"
    sed 's/^/    /' "$log" | head -5
    failed=1
  fi
  kill "$pid" 2> /dev/null
  wait "$pid" 2> /dev/null
  rm -f "$log"
}
# The old names alone still start (a worker waits for LoadStage: stopped once it listens).
expect_started "waiting for LoadStage" "waiting for LoadStage" \
  timeout 10 "$xkv" worker --listen 127.0.0.1:0 --max-step-tokens 64
# expect_steps WANT FLAGS...: `xkv serve FLAGS` (CPU) starts and its step line contains WANT.
expect_steps() {
  local want=$1
  shift
  expect_started "serving Generation" "$want" \
    timeout 60 "$xkv" serve "${listen[@]}" --model "$model" "$@"
}
steps="tokens (--max-batched-tokens), up to"
expect_steps "steps of up to 512 $steps 512 of one prompt (--prefill-chunk), 1 micro-batches in flight; reconstruct re-reads 485 prompt"
expect_steps "steps of up to 512 $steps 512 of one prompt" --max-batched-tokens 0 --prefill-chunk 0
expect_steps "steps of up to 1024 $steps 1024 of one prompt (--prefill-chunk), 1 micro-batches in flight; reconstruct re-reads 512 prompt" \
  --max-batched-tokens 1024
expect_steps "steps of up to 600 $steps 256 of one prompt" --step-tokens 600 --prefill-chunk 256
# coordinator_with_worker DEVICE WORKER_FLAGS CHECK COORDINATOR_FLAGS...: runs CHECK (a function
# taking a command) on `xkv coordinator COORDINATOR_FLAGS` in front of one `xkv worker --device
# DEVICE WORKER_FLAGS` (a word list), which it asks what it is before loading it.
coordinator_with_worker() {
  local device=$1 worker_flags=$2 check=$3 wlog port="" wpid
  shift 3
  wlog=$(mktemp)
  # shellcheck disable=SC2086  # worker_flags is a word list
  timeout 60 "$xkv" worker --listen 127.0.0.1:0 --device "$device" $worker_flags 2> "$wlog" &
  wpid=$!
  for _ in $(seq 300); do
    port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$wlog")
    [[ -n $port ]] && break
    sleep 0.1
  done
  "$check" timeout 60 "$xkv" coordinator "${listen[@]}" --model "$model" \
    --workers "127.0.0.1:$port" --wait-for-workers 0 "$@"
  kill "$wpid" 2> /dev/null
  wait "$wpid" 2> /dev/null
  rm -f "$wlog"
}
# The defaults the worker's device gives (a cuda worker's LoadStage fails after the line on a
# machine without a GPU), cut to the worker's step limit; a --max-batched-tokens above it stops
# the start with one line naming both.
started() { expect_started "xkv coordinator: stages on" "$want" "$@"; }
want="stages on cpu (CPU defaults): profile one_pass, 1 micro-batches, 512 tokens per step"
coordinator_with_worker cpu "" started
want="stages on cuda:0 (GPU defaults): profile one_pass, 1 micro-batches, 8192 tokens per step"
coordinator_with_worker cuda:0 "" started
want="stages on cuda:0 (GPU defaults): profile one_pass, 1 micro-batches, 2048 tokens per step"
coordinator_with_worker cuda:0 "--max-batched-tokens 2048" started
refused() {
  expect_error_from 1 "--max-batched-tokens 3000 is above the 2048 tokens one step may carry on worker 0 (its --max-batched-tokens); give at most 2048" "$@"
}
coordinator_with_worker cpu "--max-batched-tokens 2048" refused --max-batched-tokens 3000
exit $failed
