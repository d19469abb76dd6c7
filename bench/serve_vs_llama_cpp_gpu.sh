#!/usr/bin/env bash
# serve_vs_llama_cpp_gpu.sh: xkv against llama.cpp's batched decode on one GPU, side by side in one
# sitting (issue 13's serving target), on the GPU host:
#   1. llama.cpp's llama-batched-bench built with CUDA from the trimmed source
#      (bench/llama_cpp_batched_gpu.sh; skipped when already built on this machine);
#   2. `xkv bench gpu --batched-decode`: the engine's pure batched decode (S_TG);
#   3. `xkv serve --device cuda:0` (full cache) + `xkv bench serve` at B concurrent PP-token
#      prompts / TG-token outputs for each B (closed loop, 2B requests, 1 warm-up);
#   4. llama-batched-bench -npp PP -ntg TG -npl NPL, flash attention on and off;
#   5. one short table (bench/llama_cpp_compare.py) on stdout and in OUT_DIR/summary.md.
#
#   serve_vs_llama_cpp_gpu.sh [--build-only] OUT_DIR
#
# Run it from a gpu-bundle that holds it (scripts/gpu-bundle ... -- bench/serve_vs_llama_cpp_gpu.sh
# bench/llama_cpp_batched_gpu.sh bench/llama_cpp_compare.py llama-src.tar.xz) or from the repo
# root. Env: XKV_MODEL (the GGUF, required), GPU_BUNDLE (default: this script's folder when it
# holds the bundle's `run`, else .gpu-bundle), LLAMA_SRC (default GPU_BUNDLE/llama-src.tar.xz,
# made by scripts/pack-llama-cpp-src), PP (2048), TG (128), NPL (8,32).
# --build-only: only step 1 (a first device call can build while the model's parts travel).
set -uo pipefail
build_only=()
if [[ ${1:-} == --build-only ]]; then
  build_only=(--build-only)
  shift
fi
[[ $# -eq 1 ]] || { sed -n '2,20p' "$0" >&2; exit 2; }
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
mkdir -p "$out"
out=$(cd "$out" && pwd)
model=${XKV_MODEL:-}

"$tools/llama_cpp_batched_gpu.sh" --build-only "$src" "${model:-none}" "$out" || exit 1
((${#build_only[@]})) && exit 0
[[ -f $model ]] || { echo "serve_vs_llama_cpp_gpu: set XKV_MODEL to the GGUF" >&2; exit 2; }
"$bundle/run" --unpack || exit 2
xkv() { "$bundle/run" xkv "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt"
failed=0

# 2. The engine alone.
xkv bench gpu --batched-decode --model "$model" --prompt-tokens "$PP" --gen-tokens "$TG" \
  --batch "$NPL" --json "$out/xkv_batched.json" > "$out/xkv_batched.md" 2> "$out/xkv_batched.log" ||
  { echo "xkv bench gpu --batched-decode failed:"; tail -n 5 "$out/xkv_batched.log"; failed=1; } >&2

# 3. The service: one xkv serve, one bench serve per batch size.
max_b=$(tr ',' '\n' <<< "$NPL" | sort -n | tail -1)
xkv serve --model "$model" --device cuda:0 --stages 1 --policy full --max-batch "$max_b" \
  --step-tokens "$PP" --prefill-chunk "$PP" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --admin-insecure-local 2> "$out/serve.log" &
serve=$!
port=
for _ in $(seq 1200); do  # up to 120 s to load
  port=$(sed -n 's/.*serving Generation on port \([0-9]*\).*/\1/p' "$out/serve.log")
  [[ -n $port ]] && break
  kill -0 $serve 2>/dev/null || break
  sleep 0.1
done
if [[ -n $port ]]; then
  for b in ${NPL//,/ }; do
    xkv bench serve --server "127.0.0.1:$port" --model "$model" --rate inf --max-concurrency "$b" \
      --requests $((2 * b)) --warmup 1 --prompt-min "$PP" --prompt-max "$PP" --output-min "$TG" \
      --output-max "$TG" --json "$out/serve_$b.json" > "$out/serve_$b.md" 2>> "$out/serve_bench.log" ||
      { echo "xkv bench serve at $b failed:"; tail -n 3 "$out/serve_bench.log"; failed=1; } >&2
  done
else
  echo "serve_vs_llama_cpp_gpu: xkv serve did not start:" >&2
  tail -n 5 "$out/serve.log" >&2
  failed=1
fi
kill $serve 2>/dev/null
wait $serve 2>/dev/null

# 4. llama.cpp, after xkv has let go of the GPU.
"$tools/llama_cpp_batched_gpu.sh" "$src" "$model" "$out" > /dev/null || failed=1

# 5.
{
  echo "$(date -u +%F), $(cat "$out/gpu.txt"); $(basename "$model"), PP=$PP prompt tokens," \
    "TG=$TG generated tokens per sequence, B=$NPL sequences; decode tokens/s."
  echo
  python3 "$tools/llama_cpp_compare.py" "$out"
} | tee "$out/summary.md"
exit $failed
