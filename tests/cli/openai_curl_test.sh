#!/usr/bin/env bash
# curl smoke test of the OpenAI-compatible HTTP API: `xkv serve --http-listen` on a free loopback
# port; probes, models, a chat completion, a streamed completion ending in `data: [DONE]`, and a
# malformed body (400, OpenAI error object) after which the server still answers, and
# `xkv bench serve --endpoint openai` against it.
# Usage: openai_curl_test.sh XKV_BINARY MODEL.gguf
set -uo pipefail
xkv=${1:?xkv binary}
model=${2:?model}
[[ -f $model ]] || { echo "openai_curl_test: no model at $model (run scripts/fetch-model)"; exit 1; }
tmp=$(mktemp -d)
trap 'stop_xkv_serve; rm -rf "$tmp"' EXIT
# shellcheck source=tests/cli/serve_lib.sh
source "$(dirname "$0")/serve_lib.sh"
start_xkv_serve "$xkv" "$model" "$tmp"
base=http://127.0.0.1:$http_port
fail=0
check() {  # check NAME EXPECTED_SUBSTRING ACTUAL
  if [[ $3 == *"$2"* ]]; then echo "ok: $1"; else echo "FAIL: $1: want '$2' in: $3"; fail=1; fi
}
check health "ok" "$(curl -sS "$base/health")"
check ready "ready" "$(curl -sS "$base/ready")"
name=$(basename "$model" .gguf)
check models "\"id\":\"$name\"" "$(curl -sS "$base/v1/models")"
check chat '"object":"chat.completion"' "$(curl -sS "$base/v1/chat/completions" \
  -H 'Content-Type: application/json' \
  -d "{\"model\":\"$name\",\"max_tokens\":4,\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}")"
stream=$(curl -sS -N "$base/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"$name\",\"prompt\":\"Paris is\",\"max_tokens\":3,\"stream\":true}")
check stream-chunk 'data: {"choices":[{"finish_reason":null' "$stream"
check stream-done 'data: [DONE]' "$(tail -n 2 <<< "$stream")"
check bad-json-status "400" "$(curl -sS -o /dev/null -w '%{http_code}' "$base/v1/completions" -d '{oops')"
check bad-json-body '"type":"invalid_request_error"' "$(curl -sS "$base/v1/completions" -d '{oops')"
check still-serving '"object":"text_completion"' "$(curl -sS "$base/v1/completions" \
  -d "{\"model\":\"$name\",\"prompt\":\"Paris is\",\"max_tokens\":2}")"
# The serving benchmark drives the same API (--endpoint openai, the model id from /v1/models).
check bench-openai '| service default | 2/0 |' "$("$xkv" bench serve --endpoint openai \
  --server "$base" --model "$model" --clients 1 --requests 2 --warmup 0 --prompt-min 8 \
  --prompt-max 8 --output-min 2 --output-max 2 2>&1)"
exit $fail
