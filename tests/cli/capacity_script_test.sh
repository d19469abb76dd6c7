#!/usr/bin/env bash
# bench/capacity_8b_gpu.sh end to end on the CPU with the tiny random-weight shape: it writes the
# GGUF, serves it with a fixed KV pool, runs full / xkv / snapkv past the pool's capacity, twice
# the requests sent at once (ROUNDS=2), and prints one row per policy, every request completed,
# each with the decode rate of its decode-only steps and its preemptions (from the server's
# per-step log), and leaves no server running.
# Usage: capacity_script_test.sh XKV_BINARY
set -uo pipefail
xkv=${1:?xkv binary}
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
XKV=$xkv SHAPE=tiny MODEL_DIR=$tmp DEVICE=cpu PP=256 TG=8 POOL_SEQS=2 MAX_BATCHED_TOKENS=256 \
  ROUNDS=2 "$root/bench/capacity_8b_gpu.sh" "$tmp/out" > "$tmp/stdout" 2> "$tmp/stderr"
rc=$?
fail=0
check() {  # check NAME CONDITION_STATUS
  if [[ $2 -eq 0 ]]; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi
}
check "exit status 0 (was $rc)" $((rc != 0))
check "the GGUF was written outside OUT_DIR" "$([[ -f $tmp/tiny-q4_0.gguf ]]; echo $?)"
for row in '| full | 4 |' '| xkv | 10 |' '| snapkv | 10 |'; do
  check "row $row" "$(grep -qF "$row" "$tmp/out/summary.md"; echo $?)"
done
check "every request completed" "$(grep -c -E '\| (8/0|20/0) \|' "$tmp/out/summary.md" |
  grep -qx 3; echo $?)"
check "the decode rate and preemptions of every run from its steps" "$(grep -c -E \
  '\| [0-9]+ / [0-9.]+ \([0-9]+ of [0-9]+ steps\) \| [0-9]+% \| [0-9]+ \|' "$tmp/out/summary.md" |
  grep -qx 3
  echo $?)"
check "no xkv serve left running" "$(pgrep -f -- "serve --model $tmp/" > /dev/null; echo $((!$?)))"
check "the rounds named" \
  "$(grep -qF '2 x the requests sent at once' "$tmp/out/summary.md"; echo $?)"
# (The held column and the ratios come from /metrics samples every 0.1 s: a run this short may
# fall between two, so they are not checked here.)
if ((fail)); then
  echo "--- stdout"; cat "$tmp/stdout"; echo "--- stderr"; cat "$tmp/stderr"
  tail -n 5 "$tmp/out/serve.log"
fi
exit $fail
