#!/usr/bin/env bash
# `xkv calibrate` on the real model with tiny sizes (one 1K dev prompt, 4 continuation tokens, the
# per-head weights too): it writes a calibration file that `xkv generate --calibration` accepts,
# for the layer weights and for `--allocator heads`; the same file for another
# model (its fingerprint's hash edited), a corrupt file or a bad flag is one clear line, and the
# command runs nothing (generate, serve and eval alike).
# Usage: calibrate_test.sh XKV_BINARY MODEL.gguf
set -uo pipefail
xkv=${1:?xkv binary}
model=${2:?model}
[[ -f $model ]] || { echo "calibrate_test: no model at $model (run scripts/fetch-model)"; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cli/expect_error.sh
source "$here/expect_error.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

timeout 250 "$xkv" calibrate --model "$model" --out "$tmp/c.json" --prompts 1 --fidelity-tokens 4 \
  --heads 1 --threads 2 > "$tmp/stdout" 2> "$tmp/stderr"
rc=$?
# 30 weights of mean 1 (each layer's KL over the mean KL, none floored to all-equal ones), dev
# split; 90 head weights (30 layers x 3 KV heads) of mean 1, not all equal.
layers=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
w, kl = d["weights"], d["mean_kl"]
assert d["split"] == "dev" and d["prompts"] == 1 and len(kl) == len(w)
assert abs(sum(w) / len(w) - 1) < 0.02 and max(w) > 1.2 and min(kl) >= 0 and max(kl) > 0
hw, hkl = d["head_weights"], d["head_mean_kl"]
assert len(hw) == len(hkl) == 3 * len(w) and abs(sum(hw) / len(hw) - 1) < 0.05 and max(hw) > 2
print(len(w), len(hw))' "$tmp/c.json" 2> /dev/null)
if ((rc != 0)) || [[ $layers != "30 90" ]]; then
  echo "FAIL: calibrate -> exit $rc, $layers weights"
  sed 's/^/    /' "$tmp/stderr" | tail -5
  failed=1
else
  echo "ok: calibrate wrote 30 layer and 90 head weights"
fi

python3 - "$tmp/c.json" "$tmp/layers-only.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
del d["head_weights"], d["head_mean_kl"]
json.dump(d, open(sys.argv[2], "w"))
PY

# generate takes the layer weights (allocator global), and its per-layer allocation differs from
# the one without weights.
prompt=$(python3 -c "print(' '.join(['The ship logged its cargo and crew at every port.'] * 30))")
allocation() {  # the --show-allocation table (layer, tokens held, bytes held)
  timeout 120 "$xkv" generate --model "$model" --policy xkv --budget-fraction 0.3 --prompt "$prompt" \
    --max-tokens 2 --threads 2 --show-allocation "$@" 2> "$tmp/gen.err" > /dev/null &&
    sed -n '/^layer/,/^KV bytes held/p' "$tmp/gen.err"
}
plain=$(allocation)
weighed=$(allocation --calibration "$tmp/layers-only.json")
if [[ -z $weighed || -z $plain || $weighed == "$plain" ]]; then
  echo "FAIL: generate --calibration (same allocation as without, or an error)"
  sed 's/^/    /' "$tmp/gen.err" | tail -5
  failed=1
else
  echo "ok: generate --calibration accepted the file and moved the layers' budgets"
fi

# --allocator heads takes the file's head weights: per-(layer, KV head) budgets, the same KV bytes.
heads=$(allocation --calibration "$tmp/c.json" --allocator heads)
if [[ -z $heads || $heads == "$plain" ]]; then
  echo "FAIL: generate --allocator heads (same allocation as the default, or an error)"
  sed 's/^/    /' "$tmp/gen.err" | tail -5
  failed=1
else
  echo "ok: generate --allocator heads took the head weights"
fi
# With head weights and no allocator named, a size target takes heads (the default rule); a
# retention target takes global (heads cannot) instead of being refused.
by_default=$(allocation --calibration "$tmp/c.json")
if [[ -z $by_default || $by_default != "$heads" ]]; then
  echo "FAIL: generate --calibration (head weights) without --allocator is not allocator heads"
  sed 's/^/    /' "$tmp/gen.err" | tail -5
  failed=1
else
  echo "ok: head weights make heads the default allocator at a size target"
fi
if ! timeout 120 "$xkv" generate --model "$model" --policy xkv --retention 0.9 --prompt hi \
  --max-tokens 2 --threads 2 --calibration "$tmp/c.json" > /dev/null 2> "$tmp/gen.err"; then
  echo "FAIL: generate --retention with head weights and no --allocator"
  sed 's/^/    /' "$tmp/gen.err" | tail -5
  failed=1
else
  echo "ok: a retention target with head weights takes allocator global"
fi

# The same file for another model (the weights' hash changed), corrupt, and with a negative weight.
python3 - "$tmp/c.json" "$tmp/other.json" "$tmp/neg.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["model"]["hash"] = "fnv1a64:0123456789abcdef"
json.dump(d, open(sys.argv[2], "w"))
d = json.load(open(sys.argv[1]))
d["weights"][3] = -1
json.dump(d, open(sys.argv[3], "w"))
PY
head -c 100 "$tmp/c.json" > "$tmp/corrupt.json"
gen=(generate --model "$model" --policy xkv --budget-fraction 0.3 --prompt hi --max-tokens 2)
expect_error_from 1 "is for another model: model.hash is fnv1a64:0123456789abcdef" \
  "$xkv" "${gen[@]}" --calibration "$tmp/other.json"
expect_error_from 1 "is not a JSON object" "$xkv" "${gen[@]}" --calibration "$tmp/corrupt.json"
expect_error_from 1 "weights[3] is -1; allowed: a finite number in [0.01, 1000]" \
  "$xkv" "${gen[@]}" --calibration "$tmp/neg.json"
expect_error_from 2 "is for another model" "$xkv" serve --model "$model" --admin-insecure-local \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --calibration "$tmp/other.json"
expect_error_from 1 "is for another model" "$xkv" eval --model "$model" --split dev --limit 1 \
  --methods xkv --calibration "$tmp/other.json" --noplot --out "$tmp/eval"
expect_error_from 1 "calib=1 needs --calibration FILE" "$xkv" eval --model "$model" --split dev \
  --limit 1 --methods snapkv:calib=1 --noplot --out "$tmp/eval"
expect_error_from 1 "--fraction is 1.5; it must be in (0, 1)" "$xkv" calibrate --model "$model" \
  --fraction 1.5 --out "$tmp/x.json"
expect_error_from 1 "allocator heads needs the model's head weights" "$xkv" "${gen[@]}" \
  --allocator heads --calibration "$tmp/layers-only.json"
expect_error_from 1 "allocator heads takes a token, byte or fraction budget" "$xkv" generate \
  --model "$model" --policy xkv --retention 0.9 --prompt hi --max-tokens 2 --allocator heads \
  --calibration "$tmp/c.json"
expect_error_from 1 "allocator=heads needs --calibration FILE with head weights" "$xkv" eval \
  --model "$model" --split dev --limit 1 --methods xkv:allocator=heads --noplot --out "$tmp/eval"
expect_error_from 1 "--heads is 2; it must be 0 or 1" "$xkv" calibrate --model "$model" --heads 2 \
  --out "$tmp/x.json"
expect_error_from 2 "unexpected argument 'stray'" "$xkv" calibrate stray
"$xkv" calibrate --help 2>&1 | grep -q "^usage: xkv calibrate" || { echo "FAIL: calibrate --help"; failed=1; }
[[ -e $tmp/x.json || -e $tmp/eval ]] && { echo "FAIL: a refused command wrote a file"; failed=1; }
exit $failed
