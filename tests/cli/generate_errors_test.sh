#!/usr/bin/env bash
# `xkv generate` on bad input (issue 2, "Bad input"): each case must exit non-zero by itself (not
# by a signal: exit status 1-127), print exactly one line on stderr naming the problem, and print
# nothing on stdout. Usage: generate_errors_test.sh XKV_BINARY MODEL.gguf
set -uo pipefail
xkv=${1:?xkv binary}
model=${2:?model}
[[ -f $model ]] || { echo "generate_errors_test: no model at $model (run scripts/fetch-model)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'not a model at all\n' > "$tmp/text.gguf"
head -c 1000 "$model" > "$tmp/truncated.gguf"
python3 -c "print('word ' * 20000)" > "$tmp/long.txt"
# The real file with general.architecture rewritten from "llama" to "gpt2x" (same length).
python3 - "$model" "$tmp/arch.gguf" "$tmp/type.gguf" "$tmp/rows.gguf" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
key = b"general.architecture"
at = data.find(key) + len(key) + 4 + 8  # value type (u32), string length (u64)
assert data[at:at + 5] == b"llama"
data[at:at + 5] = b"gpt2x"
open(sys.argv[2], "wb").write(data)
# ... and with blk.0.attn_q.weight's ggml type set to 16 (IQ2_XXS, a real type xkv does not read).
import struct
name = b"blk.0.attn_q.weight"
data[at:at + 5] = b"llama"
at = data.find(struct.pack("<Q", len(name)) + name) + 8 + len(name)
n_dims = struct.unpack_from("<I", data, at)[0]
struct.pack_into("<I", data, at + 4 + 8 * n_dims, 16)
open(sys.argv[3], "wb").write(data)
# ... and as Q4_K (12), which xkv reads, but rows of 576 are not whole super-blocks of 256.
struct.pack_into("<I", data, at + 4 + 8 * n_dims, 12)
open(sys.argv[4], "wb").write(data)
PY
failed=0

# shellcheck source=tests/cli/expect_error.sh
source "$(dirname "$0")/expect_error.sh"
# expect_error EXPECTED_SUBSTRING ARGS...
expect_error() {
  local want=$1
  shift
  expect_error_from any "$want" "$xkv" generate "$@"
}

expect_error "no such file" --model "$tmp/missing.gguf" --prompt hi
expect_error "not a GGUF file" --model "$tmp/text.gguf" --prompt hi
expect_error "truncated.gguf" --model "$tmp/truncated.gguf" --prompt hi
expect_error "gpt2x" --model "$tmp/arch.gguf" --prompt hi
expect_error "tensor type 16" --model "$tmp/type.gguf" --prompt hi
expect_error "not a multiple of the Q4_K block size 256" --model "$tmp/rows.gguf" --prompt hi
expect_error "context length" --model "$model" --prompt "$(cat "$tmp/long.txt")"
expect_error "--prompt" --model "$model"
expect_error "top_p" --model "$model" --prompt hi --top-p 0
expect_error "top_p" --model "$model" --prompt hi --top-p 1.5
expect_error "--temperature" --model "$model" --prompt hi --temperature -1
expect_error "--temperature" --model "$model" --prompt hi --temperature nan
expect_error "--top-k" --model "$model" --prompt hi --top-k -3
expect_error "--max-tokens" --model "$model" --prompt hi --max-tokens -1
expect_error "--numerics" --model "$model" --prompt hi --numerics fp8
expect_error "device" --model "$model" --prompt hi --device gpu
expect_error "unknown flag" --model "$model" --prompt hi --bogus 1
expect_error "--reconstruct-chunk 9000 is out of range [64, 8192]" --model "$model" --prompt hi \
  --policy xkv --profile reconstruct --reconstruct-chunk 9000
# Per-(layer, KV head) budgets: the spec's own rules (allocator/kv_spec.cc).
expect_error "per_head is '2'" --model "$model" --prompt hi --policy xkv --per-head 2
expect_error "floor is 1.5" --model "$model" --prompt hi --policy xkv --per-head 1 --floor 1.5
expect_error "cap is 65" --model "$model" --prompt hi --policy xkv --per-head 1 --cap 65
expect_error "per_head budgets need policy xkv" --model "$model" --prompt hi --policy snapkv \
  --budget-fraction 0.2 --per-head 1
exit $failed
