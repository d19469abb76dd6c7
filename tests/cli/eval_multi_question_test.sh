#!/usr/bin/env bash
# `xkv eval --multi-question` on the CPU engine (issue 12 part 4): a 3-needle prompt is compressed
# once per method x budget without a question, then each key is asked alone on its own copy of
# the cache: 3 questions x (full + 2 methods) = 9 rows, one context (the bootstrap's unit), every
# row query-agnostic; the full cache answers the first key. Prompts without two number needles are
# a clear error that writes nothing.
# Usage: eval_multi_question_test.sh XKV_BINARY MODEL.gguf
set -uo pipefail
xkv=${1:?xkv binary}
model=${2:?model}
[[ -f $model ]] || { echo "eval_multi_question_test: no model at $model (run scripts/fetch-model)"; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
source "$here/expect_error.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
needle() { printf 'One of the special magic numbers for %s is: %s.' "$1" "$2"; }
doc="Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you about the numbers afterwards.\\n\\nThe harbor master keeps a ledger of every ship. $(needle amber-falcon 4719203) The ledger also lists the cargo, the crew and the weather of each day at sea. $(needle quiet-river 8830157) The captain signed the ledger every evening before the lamps were lit. $(needle silver-otter 2264918) The clerk copied each line into the second book."
q='\n\nWhat is the special magic number for amber-falcon mentioned in the provided text?'
cat > "$tmp/p.jsonl" <<JSONL
{"id": "ledger", "task": "multikey", "split": "test", "length": 160, "context": "$doc", "question": "$q", "answer_prefix": "The special magic number for amber-falcon mentioned in the provided text is", "answers": ["4719203"]}
JSONL
timeout 120 "$xkv" eval --model "$model" --prompts "$tmp/p.jsonl" --multi-question \
  --methods snapkv,xkv:profile=reconstruct:floor=0:mix=max --budgets 0.5 --out "$tmp/out" \
  --threads 2 --noplot > "$tmp/stdout" 2> "$tmp/stderr"
rc=$?
csv=$tmp/out/results.csv
rows=$(($(wc -l < "$csv" 2> /dev/null || echo 1) - 1))
questions=$(cut -d, -f13 "$csv" 2> /dev/null | tail -n +2 | sort -u | wc -l)
others=$(tail -n +2 "$csv" 2> /dev/null | grep -cv '^ledger,mq-multikey,agnostic,')
if ((rc != 0)) || ((rows != 9)) || ((questions != 3)) || ((others != 0)) ||
    ! grep -q '^ledger,mq-multikey,agnostic,.*,full,1.0000,.*,"4719203",".*4719203' "$csv" ||
    ! grep -q 'multi-question' "$tmp/out/summary.md"; then
  echo "FAIL: eval --multi-question -> exit $rc, $rows rows, $questions questions, $others other rows"
  sed 's/^/    /' "$tmp/stderr" | tail -5
  sed "s/^/    /" "$csv" 2> /dev/null
  failed=1
else
  echo "ok: eval --multi-question ran 3 questions over one compressed context, 9 rows"
fi
sed 's/One of the special magic numbers for quiet-river is: 8830157. //; s/One of the special magic numbers for silver-otter is: 2264918. //' \
  "$tmp/p.jsonl" > "$tmp/one.jsonl"
expect_error_from 1 "multi-question: none of the 1 prompts holds 2 or more number needles" \
  "$xkv" eval --model "$model" --prompts "$tmp/one.jsonl" --multi-question --out "$tmp/bad-out"
[[ -e $tmp/bad-out ]] && { echo "FAIL: a bad file left $tmp/bad-out"; failed=1; }
exit $failed
