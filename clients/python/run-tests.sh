#!/usr/bin/env bash
# Generates the stubs, then runs clients/python/tests (unittest) against a live `xkv serve` that the
# tests start: $XKV_BIN (the xkv binary) and $XKV_MODEL (the GGUF file). $PYTHON as generate.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-${XKV_CACHE:-$HOME/.cache/xkv}/venv/bin/python}
[[ -x $py ]] || py=python3
if ! "$py" -c "import grpc, grpc_tools" 2>/dev/null; then
  echo "run-tests.sh: $py lacks grpcio / grpcio-tools (run scripts/setup --test)" >&2
  exit 1
fi
PYTHON=$py "$here/generate.sh"
cd "$here"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m unittest discover -v -s tests -t .
