#!/usr/bin/env bash
# serve_vs_llama_cpp_gpu.sh: xkv against llama.cpp's batched decode on one GPU, side by side in one
# sitting (issue 13's serving target), on the GPU host:
#   1. llama.cpp's llama-batched-bench built with CUDA from the trimmed source
#      (bench/llama_cpp_batched_gpu.sh; skipped when already built on this machine);
#   2. `xkv bench gpu --batched-decode`: the engine's pure batched decode (S_TG);
#   3. `xkv serve --device cuda:0 --micro-batches M --log-step-timing` for each M of MICRO, and
#      per B and policy of POLICIES a burst of B PP-token prompts / TG-token outputs through
#      `xkv bench serve` ("decode tok/s (all B decoding)", llama-batched-bench's S_TG), the
#      compressed policies at BUDGET of the prompt's KV; with XKV_BASE (another bundled xkv, e.g.
#      an earlier build that knows --log-step-timing) also its serve, M = 1, full cache, as
#      server "base";
#   4. llama-batched-bench -npp PP -ntg TG -npl NPL, flash attention on and off;
#   5. the tables (bench/llama_cpp_compare.py) on stdout and in OUT_DIR/summary.md.
#
#   serve_vs_llama_cpp_gpu.sh [--build-only | --only xkv | --only llama] OUT_DIR
#
# Run it from a gpu-bundle that holds it (scripts/gpu-bundle ... -- bench/serve_vs_llama_cpp_gpu.sh
# bench/llama_cpp_batched_gpu.sh bench/llama_cpp_compare.py llama-src.tar.xz) or from the repo
# root. Env: XKV_MODEL (the GGUF, required), GPU_BUNDLE (default: this script's folder when it
# holds the bundle's `run`, else .gpu-bundle), LLAMA_SRC (default GPU_BUNDLE/llama-src.tar.xz,
# made by scripts/pack-llama-cpp-src), PP (2048), TG (128), NPL (8,32), POLICIES (full,xkv,snapkv),
# BUDGET (0.25), MICRO (1,2), STEP_LOG (16: steps per --log-step-timing line), XKV_BASE (unset),
# ASYNC (auto: each M's server with `--async-decode auto`, label mM; a list such as on,off runs
# one server per value, labels mMon, mMoff: the A/B of async decode in one sitting).
# --build-only: only step 1 (a first device call can build while the model's parts travel);
# --only xkv: steps 2, 3 and 5 (while llama.cpp builds elsewhere); --only llama: steps 1, 4, 5.
set -uo pipefail
mode=all
case ${1:-} in
  --build-only) mode=build; shift ;;
  --only) mode=${2:-}; shift 2 ;;
esac
[[ $# -eq 1 && $mode =~ ^(all|build|xkv|llama)$ ]] || { sed -n '2,27p' "$0" >&2; exit 2; }
out=$1
here=$(cd "$(dirname "$0")" && pwd)
if [[ -n ${GPU_BUNDLE:-} ]]; then
  bundle=$GPU_BUNDLE
elif [[ -x $here/run ]]; then
  bundle=$here
else
  bundle=.gpu-bundle
fi
tools=$here  # the sibling scripts: in the bundle, or bench/ of the repo
[[ -f $tools/llama_cpp_batched_gpu.sh ]] || tools=$(pwd)/bench
src=${LLAMA_SRC:-$bundle/llama-src.tar.xz}
export PP=${PP:-2048} TG=${TG:-128} NPL=${NPL:-8,32}
POLICIES=${POLICIES:-full,xkv,snapkv} BUDGET=${BUDGET:-0.25} MICRO=${MICRO:-1,2}
ASYNC=${ASYNC:-auto}
STEP_LOG=${STEP_LOG:-16}
mkdir -p "$out"
out=$(cd "$out" && pwd)
model=${XKV_MODEL:-}

if [[ $mode != xkv ]]; then
  "$tools/llama_cpp_batched_gpu.sh" --build-only "$src" "${model:-none}" "$out" || exit 1
fi
[[ $mode == build ]] && exit 0
[[ -f $model ]] || { echo "serve_vs_llama_cpp_gpu: set XKV_MODEL to the GGUF" >&2; exit 2; }
"$bundle/run" --unpack || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt"
failed=0

# One server (binary $1, micro-batches $2, label $3, extra serve flags $5...), a burst per B and
# policy of $4.
serve_runs() {
  local bin=$1 m=$2 label=$3 policies=$4 log=$out/serve_$3.log serve port b policy
  local extra=("${@:5}")
  local budget
  : > "$log"
  "$bundle/run" "$bin" serve --model "$model" --device cuda:0 --stages 1 --policy full \
    --max-batch "$max_b" --max-batched-tokens "$PP" --prefill-chunk "$PP" --micro-batches "$m" \
    --log-step-timing "$STEP_LOG" ${extra[@]+"${extra[@]}"} --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --admin-insecure-local 2>> "$log" &
  serve=$!
  port=
  for _ in $(seq 1200); do  # up to 120 s to load
    port=$(sed -n 's/.*serving Generation on port \([0-9]*\).*/\1/p' "$log")
    [[ -n $port ]] && break
    kill -0 $serve 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $port ]]; then
    echo "serve_vs_llama_cpp_gpu: $bin serve ($label) did not start:" >&2
    tail -n 5 "$log" >&2
    failed=1
    return
  fi
  for b in ${NPL//,/ }; do
    for policy in ${policies//,/ }; do
      budget=()
      [[ $policy == full ]] || budget=(--budget-fraction "$BUDGET")
      echo "=== serve_vs_llama_cpp_gpu: B=$b policy=$policy" >> "$log"
      "$bundle/run" xkv bench serve --server "127.0.0.1:$port" --model "$model" --rate inf \
        --max-concurrency "$b" --requests "$b" --warmup 1 --prompt-min "$PP" --prompt-max "$PP" \
        --output-min "$TG" --output-max "$TG" --policies "$policy" ${budget[@]+"${budget[@]}"} \
        --json "$out/serve_${label}_b${b}_$policy.json" \
        > "$out/serve_${label}_b${b}_$policy.md" 2>> "$out/serve_bench.log" ||
        { echo "xkv bench serve ($label B=$b $policy) failed:"; tail -n 3 "$out/serve_bench.log"
          failed=1; } >&2
    done
  done
  kill $serve 2>/dev/null
  wait $serve 2>/dev/null
}

if [[ $mode != llama ]]; then
  # 2. The engine alone.
  "$bundle/run" xkv bench gpu --batched-decode --model "$model" --prompt-tokens "$PP" \
    --gen-tokens "$TG" --batch "$NPL" --json "$out/xkv_batched.json" > "$out/xkv_batched.md" \
    2> "$out/xkv_batched.log" ||
    { echo "xkv bench gpu --batched-decode failed:"; tail -n 5 "$out/xkv_batched.log"
      failed=1; } >&2
  # 3. The service.
  max_b=$(tr ',' '\n' <<< "$NPL" | sort -n | tail -1)
  for m in ${MICRO//,/ }; do
    for a in ${ASYNC//,/ }; do
      if [[ $a == auto ]]; then
        serve_runs xkv "$m" "m$m" "$POLICIES"
      else
        serve_runs xkv "$m" "m$m$a" "$POLICIES" --async-decode "$a"
      fi
    done
  done
  [[ -n ${XKV_BASE:-} ]] && serve_runs "$XKV_BASE" 1 base full
fi

# 4. llama.cpp, after xkv has let go of the GPU.
if [[ $mode != xkv ]]; then
  "$tools/llama_cpp_batched_gpu.sh" "$src" "$model" "$out" > /dev/null || failed=1
fi

# 5.
{
  echo "$(date -u '+%F %H:%M UTC'), $(cat "$out/gpu.txt"); $(basename "$model"), PP=$PP prompt" \
    "tokens, TG=$TG generated tokens per sequence, B=$NPL sequences; decode tokens/s."
  echo
  python3 "$tools/llama_cpp_compare.py" "$out"
} | tee "$out/summary.md"
exit $failed
