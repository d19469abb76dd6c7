#!/usr/bin/env bash
# kvpress_gpu_pack.sh: makes, here, the one file that the side-by-side GPU run (bench/
# kvpress_gpu_run.sh, docs/quality-peers.md) carries to a GPU host without network:
#
#   bench/kvpress_gpu_pack.sh [DIR]          (DIR defaults to .gpu-bundle-kvpress, git-ignored)
#
# Needs build/xkv built with CUDA and PyPI for the wheels (scripts/fetch-kvpress-wheels). Writes
# DIR/pack.tar.xz holding b/: the xkv bundle (scripts/gpu-bundle: bin/xkv and its libraries, run,
# bench/ with the scripts), the prompt files and the kvpress wheels installed with pip --target
# (site/, for the GPU host's Python 3.12 beside its torch):
#   peers.jsonl  the test split (seed 1) of the four tasks the full cache solves at least half of
#                the time (multikey, multivalue, niah_code, niah_number) at lengths of at most
#                PEERS_MAX_LENGTH tokens (default 4096), PEERS_PER_CELL prompts per (task,
#                length) cell (default 13: all of them), strata-interleaved (bench/peer_prompts.py)
#   mq.jsonl     the test split's multikey and multiquery prompts of at most PEERS_MAX_LENGTH
#                tokens, MQ_PER_CELL per cell (default 4), for `xkv eval --multi-question`
# A device call carries at most 64 MiB with the checkout (about 4 MiB): the pack (about 19 MiB)
# should leave room for the model's 40 MiB part00 in the same call; it says when it does not.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
source "$here/scripts/lib.sh"
[[ ${1:-} == -h || ${1:-} == --help ]] && { sed -n '2,18p' "$0"; exit 0; }
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
# Installed here (pure Python but tokenizers' abi3 wheel), they compress to a third of the wheels.
rm -rf "$stage/site"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$stage/site" "$dir"/whl/*.whl
"$here/scripts/gpu-bundle" -o "$stage/b" "$xkv" -- "$here/bench" "$stage/peers.jsonl" \
  "$stage/mq.jsonl" "$stage/site"
tar -C "$stage" -cf - b | xz -T2 -6 > "$dir/pack.tar.xz"
rm -rf "$stage"
size=$(stat -c %s "$dir/pack.tar.xz")
# What travels besides: this checkout (tracked and untracked-not-ignored files) and part00.
tree=$(cd "$here" && git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb |
  tail -n 1 | cut -f1)
room=$((64 * 1024 * 1024 - tree - 40 * 1024 * 1024))
log "$dir/pack.tar.xz: $((size / 1024)) KiB; room beside the checkout and part00: $((room / 1024)) KiB"
((size <= room)) || log "kvpress_gpu_pack: the pack does not fit one call with part00: carry" \
  "it with part02 in call 1, part00 alone in call 2, part01 in call 3 (docs/quality-peers.md)"
