#!/usr/bin/env bash
# kvpress_gpu_run.sh: the whole side-by-side of docs/quality-peers.md in one GPU call, on a host
# without network, finishing within TOTAL_S seconds (default 540) with whatever it measured.
#
#   bench/kvpress_gpu_run.sh BUNDLE WORK OUT
#
# BUNDLE: the b/ folder of bench/kvpress_gpu_pack.sh (bin/xkv, run, bench/, peers.jsonl,
# mq.jsonl, site/: the kvpress wheels installed); WORK: holds smol.part00..02 (the model in parts,
# joined and checked here) and gets the logs; OUT: results (at most 8 files come back):
# xkv-results.csv, kvp-results.csv, mq-results.csv, report.md (the goal table of
# bench/kvpress_report.py over the prompts both sides ran, then the multi-question summary),
# logs.tgz.
# Order, so that the GPU serves one thing at a time: kvpress converts the model and its workers
# load it on the CPU side while `xkv eval --device cuda:0` runs on peers.jsonl (XKV_METHODS,
# budgets 0.1/0.2/0.4, modes aware,question,agnostic; at most XKV_EVAL_S s, default 180), then
# `xkv eval --multi-question` on mq.jsonl (at most XKV_MQ_S s, default 40); then the
# KVPRESS_WORKERS kvpress workers (default 4) run peers.jsonl in its interleaved order until
# TOTAL_S - 40 s (no prompt started after TOTAL_S - 70 s). A run cut short keeps every finished
# prompt, and any prefix of the file covers every task and length about equally.
# XKV_DEVICE and KVPRESS_DEVICE (default cuda:0, cuda) and XKV_THREADS let a CPU-only host run a
# tiny file end to end.
set -u
[[ $# -eq 3 ]] || { sed -n '2,21p' "$0" >&2; exit 2; }
mkdir -p "$3" && O=$(cd "$3" && pwd) || exit 3
B=$(cd "$1" && pwd) K=$(cd "$2" && pwd)
t0=$(date +%s)
at() { echo $(($(date +%s) - t0)); }
total=${TOTAL_S:-540}
cd "$K" || exit 3
if [[ ! -f smol.gguf ]]; then
  cat smol.part00 smol.part01 smol.part02 > smol.gguf
fi
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  smol.gguf" |
  sha256sum -c - || exit 3
export PYTHONUNBUFFERED=1
methods=${XKV_METHODS:-snapkv,pyramidkv,streaming,xkv,xkv:profile=reconstruct,xkv:profile=reconstruct:floor=0:mix=max}
device=${XKV_DEVICE:-cuda:0}
budgets=0.1,0.2,0.4
rm -rf "$K/go" "$K/xkv" "$K/mq" "$K/kvp"
# kvpress: convert and load now, start on the GPU when $K/go appears.
stop=$((total - 40 - $(at)))
PYTHONPATH=$B/site${PYTHONPATH:+:$PYTHONPATH} python3 "$B/bench/kvpress_eval.py" \
  --prompts "$B/peers.jsonl" --gguf smol.gguf --out "$K/kvp" --work "$K/work" \
  --workers "${KVPRESS_WORKERS:-4}" --max-new-tokens 12 --device "${KVPRESS_DEVICE:-cuda}" \
  --start-after "$K/go" --deadline-s $((stop - 30)) --stop-s "$stop" >"$K/kvp.log" 2>&1 &
kpid=$!
threads=()
[[ -n ${XKV_THREADS:-} ]] && threads=(--threads "$XKV_THREADS")
timeout "${XKV_EVAL_S:-180}" "$B/run" xkv eval --device "$device" --model smol.gguf \
  --prompts "$B/peers.jsonl" --methods "$methods" --budgets $budgets \
  --modes aware,question,agnostic --out "$K/xkv" --plot=false "${threads[@]}" >"$K/xkv.log" 2>&1
echo "xkv eval rc $? at $(at) s" >>"$K/xkv.log"
timeout "${XKV_MQ_S:-40}" "$B/run" xkv eval --device "$device" --model smol.gguf --multi-question \
  --prompts "$B/mq.jsonl" --methods "$methods" --budgets $budgets --out "$K/mq" --plot=false \
  "${threads[@]}" >"$K/mq.log" 2>&1
echo "xkv eval --multi-question rc $? at $(at) s" >>"$K/mq.log"
touch "$K/go"
echo "kvpress starts on the GPU at $(at) s" >>"$K/kvp.log"
wait $kpid
echo "kvpress rc $? at $(at) s" >>"$K/kvp.log"
# A run cut short by its time box leaves results.partial.csv (every finished prompt).
for side in xkv mq kvp; do
  for f in "$K/$side/results.csv" "$K/$side/results.partial.csv"; do
    [[ -f $f ]] && { cp "$f" "$O/$side-results.csv"; break; }
  done
done
{
  echo "# Side by side on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  echo
  if [[ -f $O/xkv-results.csv && -f $O/kvp-results.csv ]]; then
    timeout 30 python3 "$B/bench/kvpress_report.py" "$O/kvp-results.csv" "$O/xkv-results.csv"
  fi
  [[ -f $K/mq/summary.md ]] && sed 's/^# /## /' "$K/mq/summary.md"
} >"$O/report.md" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$K/gpu.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__)" >>"$K/gpu.txt" 2>&1
tar -C "$K" -czf "$O/logs.tgz" xkv.log mq.log kvp.log gpu.txt
echo "done at $(at) s"
tail -n 3 "$K/xkv.log" "$K/mq.log"
grep -E "deadline|starts|FAILED|wall time|rc " "$K/kvp.log" | tail -n 20
head -c 6000 "$O/report.md"
