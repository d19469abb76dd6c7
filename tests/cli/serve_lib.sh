# shellcheck shell=bash
# Sourced by the tests in tests/cli/: one `xkv serve` on free loopback ports (Generation, Admin
# without a token, the OpenAI API), stopped on exit.
#   start_xkv_serve XKV MODEL TMPDIR   sets serve_pid, grpc_port, http_port; the log is TMPDIR/log.
# Exits the test (status 1, with the log) when the server is not listening within 60 s. The caller's
# EXIT trap must run stop_xkv_serve.
start_xkv_serve() {
  local xkv=$1 model=$2 tmp=$3
  "$xkv" serve --model "$model" --threads 1 --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --admin-insecure-local --http-listen 127.0.0.1:0 2> "$tmp/log" &
  serve_pid=$!
  grpc_port='' http_port=''
  for _ in $(seq 600); do  # up to 60 s for the model to load
    grpc_port=$(sed -n 's/.*serving Generation on port \([0-9]*\).*/\1/p' "$tmp/log")
    http_port=$(sed -n 's/.*serving the OpenAI API on port \([0-9]*\).*/\1/p' "$tmp/log")
    [[ -n $grpc_port && -n $http_port ]] && return 0
    kill -0 "$serve_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "FAIL: xkv serve did not start"
  cat "$tmp/log"
  exit 1
}

stop_xkv_serve() {
  [[ -n ${serve_pid:-} ]] || return 0
  kill "$serve_pid" 2>/dev/null
  wait "$serve_pid" 2>/dev/null
}
