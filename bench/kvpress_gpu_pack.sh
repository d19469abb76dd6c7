#!/usr/bin/env bash
# kvpress_gpu_pack.sh: makes, here, the one file that the side-by-side GPU run (bench/
# kvpress_gpu_run.sh, docs/quality-peers.md) carries to a GPU host without network:
#
#   bench/kvpress_gpu_pack.sh [DIR]          (DIR defaults to .gpu-bundle-kvpress, git-ignored)
#
# Needs build/xkv built with CUDA and PyPI for the wheels (scripts/fetch-kvpress-wheels). Writes
# DIR/pack.tar.xz holding b/: the xkv bundle (scripts/gpu-bundle: bin/xkv and its libraries, run,
# bench/ with the scripts), the prompt files and the kvpress wheels (whl/):
#   peers.jsonl  the test split (seed 1) of the four tasks the full cache solves at least half of
#                the time (multikey, multivalue, niah_code, niah_number) at lengths of at most
#                PEERS_MAX_LENGTH tokens (default 4096), PEERS_PER_CELL prompts per (task,
#                length) cell (default 13: all of them), strata-interleaved (bench/peer_prompts.py)
#   mq.jsonl     the test split's multikey and multiquery prompts of at most PEERS_MAX_LENGTH
#                tokens, MQ_PER_CELL per cell (default 4), for `xkv eval --multi-question`
# A device call carries at most 64 MiB with the checkout (about 4 MiB): the pack must leave room
# for the model's 40 MiB part00 in the same call, so it fails above 19 MiB.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/lib.sh"
[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,19p' "$0"; exit 0; }
dir=${1:-.gpu-bundle-kvpress}
xkv=${XKV:-build/xkv}
max=${PEERS_MAX_LENGTH:-4096}
[[ -x $xkv ]] || die "kvpress_gpu_pack: $xkv is not built (cmake --build build --target xkv)"
mkdir -p "$dir/stage"
stage=$dir/stage
"$xkv" eval --export-prompts "$stage/test4.jsonl" --suite full --split test \
  --tasks multikey,multivalue,niah_code,niah_number
"$xkv" eval --export-prompts "$stage/testmq.jsonl" --suite full --split test \
  --tasks multikey,multiquery
python3 "$here/bench/peer_prompts.py" "$stage/test4.jsonl" "$stage/peers.jsonl" \
  --max-length "$max" --per-cell "${PEERS_PER_CELL:-13}"
python3 "$here/bench/peer_prompts.py" "$stage/testmq.jsonl" "$stage/mq.jsonl" \
  --max-length "$max" --per-cell "${MQ_PER_CELL:-4}"
"$here/scripts/fetch-kvpress-wheels" "$dir/whl"
rm -rf "$stage/whl" && cp -r "$dir/whl" "$stage/whl"
"$here/scripts/gpu-bundle" -o "$stage/b" "$xkv" -- "$here/bench" "$stage/peers.jsonl" \
  "$stage/mq.jsonl" "$stage/whl"
tar -C "$stage" -cf - b | xz -T2 -6 > "$dir/pack.tar.xz"
rm -rf "$stage"
size=$(stat -c %s "$dir/pack.tar.xz")
log "$dir/pack.tar.xz: $((size / 1024)) KiB"
((size <= 19 * 1024 * 1024)) ||
  die "kvpress_gpu_pack: the pack is over 19 MiB: it no longer fits one call with part00"
