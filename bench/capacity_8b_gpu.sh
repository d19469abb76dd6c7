#!/usr/bin/env bash
# capacity_8b_gpu.sh: issue 13's capacity targets at one fixed KV pool (docs/benchmarks-serving.md,
# "Capacity at a fixed KV pool"). On the GPU host:
#   1. writes the random-weight Llama-3-8B GGUF (`xkv bench model --shape $SHAPE --type q4_0`),
#      unless XKV_MODEL names a GGUF;
#   2. starts one `xkv serve` whose KV pool holds POOL_SEQS full-cache sequences of PP + TG tokens
#      (--kv-blocks, the same bytes for every policy) with /metrics on;
#   3. for each policy of POLICIES (full, xkv and snapkv keeping FRACTION of the prompt prefix; per
#      request, against the same server): `xkv bench serve` closed loop with more requests at once
#      than the pool can hold (CONC_<policy>, default 2 x POOL_SEQS for full, 5 x for the others),
#      PP-token prompts, TG-token outputs, ROUNDS x CONC requests in all (ROUNDS > 1: the held
#      batch refills as requests finish, a steady state rather than one burst), while
#      capacity_probe.py polls /metrics;
#   4. prints one table (OUT_DIR/summary.md): concurrency held (the most requests the KV manager
#      ran at once), output tok/s, the decode rate of the held batch (from the decode-only steps of
#      `xkv serve --log-step-timing 1`) and the share of decode tokens made by steps shared with
#      prompt work, ITL and TTFT, profiling + solving as a share of TTFT less the queue wait, mean
#      KV vs full; with STAGES > 1 also the planner's predicted KV bytes per stage vs what the
#      stages held. Compare policies at the same CONC (the mixed share grows with the run).
#
#   capacity_8b_gpu.sh OUT_DIR
#
# Env (defaults for one H100): XKV (the xkv binary; default: the bundle's `run xkv` beside this
# script, else build/xkv), XKV_MODEL, SHAPE (llama3-8b), MODEL_DIR (/tmp: where the GGUF is written,
# never under OUT_DIR), DEVICE (cuda:0), STAGES (1), PP (16384), TG (64), POOL_SEQS (4),
# FRACTION (0.25: the kept fraction of the prompt prefix, --budget-fraction), ROUNDS (1),
# POLICIES (full,xkv,snapkv), CONC_full / CONC_xkv / CONC_snapkv, MAX_BATCHED_TOKENS (4096; the
# prefill chunk too), EXTRA_SERVE_FLAGS.
# The 2-stage pipeline target (issue 13, needs 2 GPUs): STAGES=2 DEVICE=cuda:0,cuda:1
# POOL_SEQS=8 (the same pool per GPU) capacity_8b_gpu.sh OUT2, against the 1-stage run's table.
set -uo pipefail
[[ $# -eq 1 ]] || { sed -n '2,30p' "$0" >&2; exit 2; }
out=$1
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [[ -n ${XKV:-} ]]; then
  xkv() { "$XKV" "$@"; }
elif [[ -x $here/run ]]; then
  "$here/run" --unpack || exit 2
  xkv() { "$here/run" xkv "$@"; }
else
  xkv() { "$here/../build/xkv" "$@"; }
fi
probe=$here/capacity_probe.py
[[ -f $probe ]] || probe=$here/../bench/capacity_probe.py
SHAPE=${SHAPE:-llama3-8b} DEVICE=${DEVICE:-cuda:0} STAGES=${STAGES:-1} PP=${PP:-16384}
TG=${TG:-64} POOL_SEQS=${POOL_SEQS:-4} FRACTION=${FRACTION:-0.25} ROUNDS=${ROUNDS:-1}
POLICIES=${POLICIES:-full,xkv,snapkv} MAX_BATCHED_TOKENS=${MAX_BATCHED_TOKENS:-4096}
model=${XKV_MODEL:-}
if [[ -z $model ]]; then
  model=${MODEL_DIR:-/tmp}/$SHAPE-q4_0.gguf
  if [[ ! -f $model ]]; then
    t0=$(date +%s)
    ctx=$(((PP + TG) > 32768 ? PP + TG : 32768))  # Llama-3-8B's own context is 8192
    xkv bench model --shape "$SHAPE" --type q4_0 --context "$ctx" --out "$model" \
      > "$out/model.log" 2>&1 ||
      { echo "capacity: xkv bench model failed:" >&2; tail -n 5 "$out/model.log" >&2; exit 1; }
    echo "wrote $model in $(($(date +%s) - t0)) s" >> "$out/model.log"
  fi
fi
[[ -f $model ]] || { echo "capacity: no model at $model" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" \
  2> /dev/null || echo "$(nproc) CPU threads, $(uname -m)" > "$out/gpu.txt"

# The pool: POOL_SEQS full caches of PP + TG tokens in every layer (16-token blocks).
blocks=$((POOL_SEQS * ((PP + TG + 15) / 16)))
conc_of() {  # requests sent at once for policy $1: CONC_$1, else more than its pool can hold
  local var=CONC_$1
  if [[ $1 == full ]]; then echo "${!var:-$((2 * POOL_SEQS))}"; else echo "${!var:-$((5 * POOL_SEQS))}"; fi
}
max_conc=0
for p in ${POLICIES//,/ }; do
  c=$(conc_of "$p")
  ((c > max_conc)) && max_conc=$c
done
# shellcheck disable=SC2086  # EXTRA_SERVE_FLAGS is a word list
xkv serve --model "$model" --device "$DEVICE" --stages "$STAGES" --policy full \
  --kv-blocks "$blocks" --max-batch "$max_conc" --max-batched-tokens "$MAX_BATCHED_TOKENS" \
  --prefill-chunk "$MAX_BATCHED_TOKENS" --max-queue-wait 600 --concurrency "$max_conc" \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --admin-insecure-local \
  --metrics-listen 127.0.0.1:0 --log-step-timing 1 ${EXTRA_SERVE_FLAGS:-} 2> "$out/serve.log" &
serve=$!
# The server and its children: `xkv` is a function (and `run` a wrapper), so $serve is a subshell
# whose xkv process outlives a kill of the subshell alone.
# shellcheck disable=SC2317  # called by cleanup (the EXIT trap)
tree_of() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1"); do tree_of "$child"; done
}
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  [[ -n ${poller:-} ]] && kill "$poller" 2> /dev/null
  local pids pid alive
  pids=$(tree_of "$serve")
  for pid in $pids; do kill "$pid" 2> /dev/null; done
  for _ in $(seq 100); do  # up to 10 s to shut down (it releases every stage's blocks)
    alive=0
    for pid in $pids; do kill -0 "$pid" 2> /dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in $pids; do kill -9 "$pid" 2> /dev/null; done
  wait "$serve" 2> /dev/null
}
trap cleanup EXIT
t0=$(date +%s)
port='' mport=''
for _ in $(seq 3000); do  # up to 300 s to load
  port=$(sed -n 's/.*serving Generation on port \([0-9]*\).*/\1/p' "$out/serve.log")
  mport=$(sed -n 's/.*serving \/metrics on port \([0-9]*\).*/\1/p' "$out/serve.log")
  [[ -n $port && -n $mport ]] && break
  kill -0 $serve 2> /dev/null || break
  sleep 0.1
done
if [[ -z $port || -z $mport ]]; then
  echo "capacity: xkv serve did not start:" >&2
  tail -n 5 "$out/serve.log" >&2
  exit 1
fi
echo "xkv serve ready in $(($(date +%s) - t0)) s (port $port, metrics $mport)" >> "$out/serve.log"
echo "$(date -u +%T) xkv serve ready" >> "$out/timeline.txt"
metrics=http://127.0.0.1:$mport/metrics

failed=0
: > "$out/runs.tsv"
for p in ${POLICIES//,/ }; do
  c=$(conc_of "$p")
  target=()
  [[ $p != full ]] && target=(--budget-fraction "$FRACTION")
  name=run_$p
  echo "$(date -u +%T) $p: $c requests at once" >> "$out/timeline.txt"
  python3 "$probe" scrape "$metrics" "$out/$name.before" || failed=1
  python3 "$probe" poll "$metrics" "$out/$name.poll" &
  poller=$!
  first_line=$(wc -l < "$out/serve.log")
  xkv bench serve --server "127.0.0.1:$port" --model "$model" --rate inf --max-concurrency "$c" \
    --requests $((ROUNDS * c)) --warmup 1 --prompt-min "$PP" --prompt-max "$PP" --output-min "$TG" \
    --output-max "$TG" --policies "$p" "${target[@]}" --json "$out/$name.json" \
    > "$out/$name.md" 2> "$out/$name.log" ||
    { echo "capacity: xkv bench serve ($p) failed:"; tail -n 3 "$out/$name.log"; failed=1; } >&2
  kill "$poller" 2> /dev/null
  wait "$poller" 2> /dev/null
  poller=
  python3 "$probe" scrape "$metrics" "$out/$name.after" || failed=1
  echo "$p $c $name $first_line $(wc -l < "$out/serve.log")" >> "$out/runs.tsv"
done

echo "$(date -u +%T) done" >> "$out/timeline.txt"
{
  echo "$(date -u '+%F %H:%M UTC'), $(cat "$out/gpu.txt"); $(basename "$model"), $STAGES stage(s)" \
    "on $DEVICE; KV pool $blocks blocks per layer ($POOL_SEQS full caches of $PP + $TG tokens);" \
    "prompts $PP tokens, outputs $TG tokens (ignore_eos), closed loop, $ROUNDS x the requests" \
    "sent at once, 1 warm-up."
  echo
  python3 "$probe" table "$out"
} | tee "$out/summary.md"
exit $failed
