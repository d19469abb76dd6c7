#!/usr/bin/env bash
# `xkv eval --prompts FILE.jsonl` on the CPU engine (issue 12): a 2-line prompts file (raw text,
# then chat messages) runs through full + snapkv in the three query modes and leaves results.csv and
# summary.md; a bad file names its line and field, runs nothing and writes nothing.
# Usage: eval_prompts_test.sh XKV_BINARY MODEL.gguf
set -uo pipefail
xkv=${1:?xkv binary}
model=${2:?model}
[[ -f $model ]] || { echo "eval_prompts_test: no model at $model (run scripts/fetch-model)"; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
source "$here/expect_error.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
doc='The harbor master keeps a ledger of every ship. The special magic number for amber-falcon is: 4719203. The ledger also lists the cargo, the crew and the weather of each day at sea.'
cont=' The captain signed the ledger every evening before the lamps were lit, and the clerk copied each line into the second book that was kept in the office by the quay.'
cat > "$tmp/p.jsonl" <<JSONL
{"id": "raw", "task": "niah_number", "split": "test", "length": 80, "context": "$doc", "question": "\n\nWhat is the special magic number for amber-falcon?", "answer_prefix": "The special magic number for amber-falcon is", "answers": ["4719203"], "continuation": "$cont"}
{"id": "chat", "task": "niah_number", "split": "test", "length": 80, "context": "", "question": "What is the special magic number for amber-falcon?", "answer_prefix": "The number is", "answers": ["4719203"], "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "$doc\n\nWhat is the special magic number for amber-falcon?"}]}
JSONL
timeout 120 "$xkv" eval --model "$model" --prompts "$tmp/p.jsonl" --methods snapkv --budgets 0.5 \
  --modes aware,question,agnostic --out "$tmp/out" --threads 2 --noplot > "$tmp/stdout" 2> "$tmp/stderr"
rc=$?
rows=$(($(wc -l < "$tmp/out/results.csv" 2> /dev/null || echo 1) - 1))
# 2 prompts x 3 modes x (full + snapkv@50%) = 12 rows; the full cache finds the number.
if ((rc != 0)) || ((rows != 12)) || ! grep -q '^raw,niah_number,aware,.*,full,1.0000,.*"4719203",".*4719203' \
    "$tmp/out/results.csv" || ! grep -q 'accuracy (question)' "$tmp/out/summary.md"; then
  echo "FAIL: eval --prompts -> exit $rc, $rows rows"
  sed 's/^/    /' "$tmp/stderr" | tail -5
  head -5 "$tmp/out/results.csv" 2> /dev/null | sed 's/^/    /'
  failed=1
else
  echo "ok: eval --prompts ran 2 prompts, 12 rows"
fi
# The raw prompt has a continuation (fidelity measured), the chat prompt none (empty fields).
grep -q '^raw,.*,[0-9.]*,[0-9.]*,[0-9.]*,[1-9][0-9]*$' "$tmp/out/results.csv" || { echo "FAIL: no fidelity on the raw prompt"; failed=1; }
grep -q '^chat,.*,,,,0$' "$tmp/out/results.csv" || { echo "FAIL: fidelity on the chat prompt"; failed=1; }

# The observation window covers the context's tail when the question is shorter (SnapKV's and
# kvpress's last w prompt tokens): a 16-token window with a ~12-token question runs in every mode,
# adakv and snapkv@kvpress (window 64: more than these contexts) included, and every method holds
# the budget's bytes (kv_percent 50).
timeout 120 "$xkv" eval --model "$model" --prompts "$tmp/p.jsonl" --methods snapkv,adakv,xkv \
  --window 16 --budgets 0.5 --modes aware,question,agnostic --out "$tmp/w16" --threads 2 --noplot \
  > /dev/null 2> "$tmp/stderr16"
rc=$?
rows=$(($(wc -l < "$tmp/w16/results.csv" 2> /dev/null || echo 1) - 1))
# 2 prompts x 3 modes x (full + 3 methods) = 24 rows, each compressed one at 50.000% of the bytes.
held=$(awk -F, 'NR > 1 && $7 != "full" && $11 != "50.000"' "$tmp/w16/results.csv" 2> /dev/null | wc -l)
if ((rc != 0)) || ((rows != 24)) || ((held != 0)); then
  echo "FAIL: eval --window 16 with a shorter question -> exit $rc, $rows rows, $held off-budget"
  sed 's/^/    /' "$tmp/stderr16" | tail -5
  failed=1
else
  echo "ok: a 16-token window over a shorter question: 24 rows at 50% of the bytes"
fi
expect_error_from 1 "needs more context tokens than the observation window 64" \
  "$xkv" eval --model "$model" --prompts "$tmp/p.jsonl" --methods snapkv@kvpress --out "$tmp/bad-out"
expect_error_from 1 "method window is 65; it must be in [8, 64]" \
  "$xkv" eval --model "$model" --prompts "$tmp/p.jsonl" --methods xkv:window=65 --out "$tmp/bad-out"

sed 's/"split": "test"/"split": "train"/; 2s/"answers": \["4719203"\]/"answers": []/' "$tmp/p.jsonl" \
  > "$tmp/bad.jsonl"
sed -n 1p "$tmp/p.jsonl" > "$tmp/bad2.jsonl"
printf '{"id": "raw"}\n' >> "$tmp/bad2.jsonl"
expect_error_from 1 "line 1: field 'split': 'train' (allowed: dev, test)" \
  "$xkv" eval --model "$model" --prompts "$tmp/bad.jsonl" --out "$tmp/bad-out"
expect_error_from 1 "line 2: field 'task': missing" \
  "$xkv" eval --model "$model" --prompts "$tmp/bad2.jsonl" --out "$tmp/bad-out"
expect_error_from 1 "cannot be read" \
  "$xkv" eval --model "$model" --prompts "$tmp/none.jsonl" --out "$tmp/bad-out"
expect_error_from 1 "--modes: 'later' is not a query mode; allowed: aware, question, agnostic" \
  "$xkv" eval --model "$model" --prompts "$tmp/p.jsonl" --modes aware,later --out "$tmp/bad-out"
expect_error_from 1 "--reconstruct-chunk 63 is out of range [64, 8192]" \
  "$xkv" eval --model "$model" --prompts "$tmp/p.jsonl" --reconstruct-chunk 63 --out "$tmp/bad-out"
expect_error_from 1 "is not 'cpu' or 'cuda:N'" \
  "$xkv" eval --model "$model" --prompts "$tmp/p.jsonl" --device tpu --out "$tmp/bad-out"
[[ -e $tmp/bad-out ]] && { echo "FAIL: a bad file left $tmp/bad-out"; failed=1; }
exit $failed
