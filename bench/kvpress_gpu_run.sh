#!/usr/bin/env bash
# kvpress_gpu_run.sh: the side-by-side run of docs/quality-peers.md on a GPU host without network.
#
#   bench/kvpress_gpu_run.sh BUNDLE WORK OUT
#
# BUNDLE: a scripts/gpu-bundle folder holding build/xkv plus bench/kvpress_eval.py,
# kvpress_report.py, prompts_jsonl.py, peers.jsonl and peers-2k.jsonl (bench/peer_prompts.py);
# WORK: holds smol.part00..02 (the model in parts, joined and checked here) and site/ (the wheels
# of scripts/fetch-kvpress-wheels installed with pip --target); OUT: where the results go
# (xkv-results.csv, kvp-results.csv, cpu-results.csv, logs.tgz).
# Runs, at once: xkv eval on the CUDA engine (snapkv, pyramidkv, streaming, xkv; then the
# reconstruct mode, which the CUDA engine may refuse), xkv's reconstruct mode on the CPU engine
# for KVPRESS_CPU_S seconds (default 225), and kvpress (KVPRESS_WORKERS workers, default 11, no
# new prompt after KVPRESS_DEADLINE_S = 195 s, stopped at KVPRESS_STOP_S = 232 s).
set -u
[[ $# -eq 3 ]] || { sed -n '2,15p' "$0" >&2; exit 2; }
B=$(cd "$1" && pwd) K=$(cd "$2" && pwd) O=$3
cd "$K" && cat smol.part00 smol.part01 smol.part02 > smol.gguf
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  smol.gguf" |
  sha256sum -c - || exit 3
export PYTHONUNBUFFERED=1
methods=snapkv,pyramidkv,streaming,xkv
recon=xkv:profile=reconstruct:floor=0:mix=max
modes=aware,question,agnostic
t0=$(date +%s)
(
  "$B/run" xkv eval --device cuda:0 --model smol.gguf --prompts "$B/peers.jsonl" \
    --methods $methods --budgets 0.1,0.2,0.4 --modes $modes --out "$K/xkv" --plot=false \
    >"$K/xkv.log" 2>&1
  echo "xkv rc $? at $(($(date +%s) - t0)) s" >>"$K/xkv.log"
  "$B/run" xkv eval --device cuda:0 --model smol.gguf --prompts "$B/peers.jsonl" \
    --methods $recon --budgets 0.2 --modes aware --out "$K/xkvr" --plot=false >"$K/xkvr.log" 2>&1
  echo "xkv reconstruct cuda rc $?" >>"$K/xkvr.log"
) &
xpid=$!
(
  timeout "${KVPRESS_CPU_S:-225}" "$B/run" xkv eval --device cpu --threads 3 --model smol.gguf \
    --prompts "$B/peers-2k.jsonl" --methods $recon --budgets 0.1,0.2,0.4 --modes $modes \
    --out "$K/cpu" --plot=false >"$K/cpu.log" 2>&1
) &
cpid=$!
PYTHONPATH=$K/site python3 "$B/bench/kvpress_eval.py" --prompts "$B/peers.jsonl" \
  --gguf smol.gguf --out "$K/kvp" --work "$K/work" --workers "${KVPRESS_WORKERS:-11}" \
  --max-new-tokens 12 --deadline-s "${KVPRESS_DEADLINE_S:-195}" \
  --stop-s "${KVPRESS_STOP_S:-232}" >"$K/kvp.log" 2>&1
echo "kvpress rc $? at $(($(date +%s) - t0)) s" >>"$K/kvp.log"
wait $xpid $cpid
mkdir -p "$O"
cp "$K/xkv/results.csv" "$O/xkv-results.csv"
cp "$K/kvp/results.csv" "$O/kvp-results.csv"
cp "$K/cpu/results.partial.csv" "$O/cpu-results.csv" 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$K/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" >>"$K/gpu.txt"
tar -C "$K" -czf "$O/logs.tgz" xkv.log xkvr.log cpu.log kvp.log gpu.txt
tail -n 5 "$K/xkv.log" "$K/xkvr.log" "$K/cpu.log"
tail -n 40 "$K/kvp.log"
