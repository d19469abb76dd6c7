#!/usr/bin/env bash
# llama_cpp_batched_gpu.sh: llama.cpp's batched decode on the GPU host, the peer of
# `xkv bench gpu --batched-decode`. Builds llama-batched-bench with CUDA from the trimmed source of
# scripts/pack-llama-cpp-src (no network needed), then runs it on the model with every layer on the
# GPU, flash attention on and off, and writes its tables.
#
#   bench/llama_cpp_batched_gpu.sh [--build-only] SRC.tar.xz MODEL.gguf OUT_DIR
#
# The build goes to $LLAMA_BUILD_DIR (default /root/llama-cpp-build) and is reused when
# llama-batched-bench is already there (a second call on a warm machine skips the ~5 minute
# build). --build-only stops after the build. Env: PP (2048), TG (128), NPL (8,32),
# CUDA_ARCH (90), JOBS (all cores).
# OUT_DIR gets llama_batched_fa_on.md / llama_batched_fa_off.md (llama-batched-bench's settings
# line and Markdown table), its whole output (.log), llama_build.log, and llama_batched.tsv:
# "fa B S_TG S_PP" per row.
set -uo pipefail
build_only=0
if [[ ${1:-} == --build-only ]]; then
  build_only=1
  shift
fi
[[ $# -eq 3 ]] || { sed -n '2,15p' "$0" >&2; exit 2; }
src=$1 model=$2 out=$3
pp=${PP:-2048} tg=${TG:-128} npl=${NPL:-8,32}
arch=${CUDA_ARCH:-90} jobs=${JOBS:-$(nproc)}
build=${LLAMA_BUILD_DIR:-/root/llama-cpp-build}
mkdir -p "$out"
bin=$build/build/bin/llama-batched-bench

if [[ ! -x $bin ]]; then
  [[ -f $src ]] || { echo "llama_cpp_batched_gpu: no source tarball at $src" >&2; exit 2; }
  start=$SECONDS
  mkdir -p "$build"
  tar -C "$build" -xJf "$src" || exit 2
  # CPU and CUDA backends only, this GPU's architecture only, the one tool.
  if ! { cmake -S "$build/llama.cpp" -B "$build/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF &&
    cmake --build "$build/build" -j "$jobs" --target llama-batched-bench; } \
    > "$out/llama_build.log" 2>&1; then
    tail -n 30 "$out/llama_build.log" >&2
    echo "llama_cpp_batched_gpu: build failed (log: $out/llama_build.log)" >&2
    exit 1
  fi
  echo "llama_cpp_batched_gpu: built llama-batched-bench in $((SECONDS - start)) s" >&2
fi
((build_only)) && exit 0
[[ -f $model ]] || { echo "llama_cpp_batched_gpu: no model at $model" >&2; exit 2; }

# Every sequence gets its own n_ctx / max(B) cells (not unified): room for PP + TG each.
max_b=$(tr ',' '\n' <<< "$npl" | sort -n | tail -1)
ctx=$((max_b * (pp + tg + 256)))
: > "$out/llama_batched.tsv"
rc=0
for fa in on off; do
  md=$out/llama_batched_fa_$fa.md
  "$bin" -m "$model" -ngl 99 -fa "$fa" -c "$ctx" -b 2048 -ub 512 -npp "$pp" -ntg "$tg" \
    -npl "$npl" --output-format md > "$out/llama_batched_fa_$fa.log" 2>&1 || {
    echo "llama_cpp_batched_gpu: llama-batched-bench -fa $fa failed:" >&2
    tail -n 20 "$out/llama_batched_fa_$fa.log" >&2
    rc=1
    continue
  }
  { grep -m1 'n_kv_max' "$out/llama_batched_fa_$fa.log"; echo; grep '^|' "$out/llama_batched_fa_$fa.log"; } > "$md"
  # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
  awk -F'|' -v fa="$fa" '$2 ~ /^ *[0-9]+ *$/ { gsub(/ /, ""); print fa, $4, $9, $7 }' "$md" \
    >> "$out/llama_batched.tsv"
done
cat "$out"/llama_batched_fa_*.md
exit $rc
