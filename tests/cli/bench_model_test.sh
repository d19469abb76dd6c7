#!/usr/bin/env bash
# `xkv bench model`: random-weight GGUFs of a named shape load and generate (`xkv generate` on the
# tiny shape in several weight types); bad shapes, types and sizes are one-line errors.
# Usage: bench_model_test.sh XKV_BINARY
set -uo pipefail
xkv=${1:?xkv binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
for type in q8_0 q4_0 f16; do
  if ! "$xkv" bench model --shape tiny --type "$type" --out "$tmp/$type.gguf" 2>/dev/null; then
    echo "FAIL: bench model --type $type"; failed=1; continue
  fi
  out=$("$xkv" generate --model "$tmp/$type.gguf" --prompt "hello" --max-tokens 3 --threads 1 \
        2>"$tmp/err")
  if [[ $? -ne 0 ]] || ! grep -q "generation: 3 tokens" "$tmp/err"; then
    echo "FAIL: generate on the $type model: $(cat "$tmp/err")"; failed=1
  else
    echo "ok: $type model generates (${#out} bytes)"
  fi
done
# shellcheck source=tests/cli/expect_error.sh
source "$(dirname "$0")/expect_error.sh"
expect_error_from 2 "--shape 'gpt5'" "$xkv" bench model --shape gpt5 --out "$tmp/x.gguf"
expect_error_from 2 "--type 'q9_9'" "$xkv" bench model --type q9_9 --out "$tmp/x.gguf"
expect_error_from 2 "multiples of 256 for Q4_K" "$xkv" bench model --shape tiny --type q4_k --out "$tmp/x.gguf"
expect_error_from 2 "--out is required" "$xkv" bench model --shape tiny
expect_error_from 2 "--context" "$xkv" bench model --shape tiny --context -4 --out "$tmp/x.gguf"
[[ -e $tmp/x.gguf ]] && { echo "FAIL: a refused command wrote a file"; failed=1; }
exit $failed
