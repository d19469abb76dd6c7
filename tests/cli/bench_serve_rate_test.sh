#!/usr/bin/env bash
# `xkv bench serve --rate` against a real `xkv serve` on loopback (gRPC and the OpenAI endpoint):
# an open-loop run completes every request, cannot end before its last seeded arrival, and writes
# the vLLM-style JSON; goodput is the whole throughput under a loose SLO and 0 under an impossible
# one; a burst reports its decode window (decode tok/s, all B decoding); bad --rate / --goodput
# values exit 2 with one line. Usage: bench_serve_rate_test.sh XKV MODEL
set -uo pipefail
xkv=${1:?xkv binary}
model=${2:?model}
[[ -f $model ]] || { echo "bench_serve_rate_test: no model at $model (run scripts/fetch-model)"; exit 1; }
tmp=$(mktemp -d)
trap 'stop_xkv_serve; rm -rf "$tmp"' EXIT
# shellcheck source=tests/cli/serve_lib.sh
source "$(dirname "$0")/serve_lib.sh"
start_xkv_serve "$xkv" "$model" "$tmp"
grpc=$grpc_port http=$http_port
fail=0
check() {  # check NAME EXPECTED_SUBSTRING ACTUAL
  if [[ $3 == *"$2"* ]]; then echo "ok: $1"; else echo "FAIL: $1: want '$2' in: $3"; fail=1; fi
}
load=(--model "$model" --warmup 0 --prompt-min 8 --prompt-max 16 --output-min 3 --output-max 3)

# Open loop, 6 requests at 8/s with no cap: the last arrival is at 6 / 8 = 0.75 s (normalised).
out=$("$xkv" bench serve --server "127.0.0.1:$grpc" "${load[@]}" --rate 8 --max-concurrency 0 \
  --requests 6 --goodput ttft:60000,tpot:60000 --json "$tmp/open.json" 2>&1)
check open-loop-header 'Open loop: Poisson arrivals at 8 requests/s (seed 1), no concurrency cap' "$out"
check open-loop-row '| service default | 6/0 |' "$out"
check open-loop-json ok "$(python3 - "$tmp/open.json" <<'PY' 2>&1
import json, sys
j = json.load(open(sys.argv[1]))
r = j["results"][0]
assert j["request_rate"] == 8 and j["max_concurrency"] == 0, j
assert r["completed"] == 6 and r["failed"] == 0, r
assert r["duration"] >= 0.75, r["duration"]  # not before the last arrival
assert r["total_output_tokens"] == 18, r
assert abs(r["request_goodput"] - r["request_throughput"]) < 1e-9, r  # loose SLO: all good
for k in ("ttft", "tpot", "itl", "e2el"):
    assert 0 < r[f"median_{k}_ms"] <= r[f"p99_{k}_ms"], (k, r)
print("ok")
PY
)"

# Closed loop through the OpenAI endpoint: an SLO nobody meets gives goodput 0.
out=$("$xkv" bench serve --endpoint openai --server "http://127.0.0.1:$http" "${load[@]}" \
  --rate inf --max-concurrency 2 --requests 4 --goodput ttft:0.001 --json "$tmp/closed.json" 2>&1)
check closed-loop-header 'Closed loop: every request sent at once (--rate inf), at most 2 in flight' "$out"
check closed-loop-goodput ok "$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
assert r["completed"] == 4 and r["request_goodput"] == 0 and r["request_throughput"] > 0, r
print("ok")' "$tmp/closed.json" 2>&1)"

# A burst of 3 (all sent at once): the window in which all 3 decode holds tokens, and the table
# shows its rate.
out=$("$xkv" bench serve --server "127.0.0.1:$grpc" --model "$model" --warmup 0 --prompt-min 8 \
  --prompt-max 16 --output-min 8 --output-max 8 --rate inf --max-concurrency 3 --requests 3 \
  --json "$tmp/burst.json" 2>&1)
check burst-row 'tokens in ' "$out"
check burst-decode-window ok "$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
assert r["completed"] == 3, r
assert 0 < r["decode_window_tokens"] <= 3 * 7 and r["decode_window_s"] > 0, r
rate = r["decode_window_tokens"] / r["decode_window_s"]
assert abs(r["decode_throughput_all_decoding"] - rate) < 1e-6 * rate, r
print("ok")' "$tmp/burst.json" 2>&1)"

# Bad values: exit status 2 and one line naming the flag.
for args in "--rate 0" "--rate -3" "--burstiness 0" "--goodput ttft" "--goodput itl:5" \
  "--max-concurrency -1"; do
  # shellcheck disable=SC2086
  err=$("$xkv" bench serve --server "127.0.0.1:$grpc" "${load[@]}" --requests 1 $args 2>&1 >/dev/null)
  rc=$?
  flag=${args%% *}
  if [[ $rc -eq 2 && $(wc -l <<< "$err") -eq 1 && $err == *"${flag}"* ]]; then
    echo "ok: rejects $args"
  else
    echo "FAIL: $args: rc=$rc: $err"
    fail=1
  fi
done
exit $fail
