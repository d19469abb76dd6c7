#!/usr/bin/env bash
# Generates xkv_client's gRPC stubs from proto/ (see generate_stubs.py). $PYTHON picks the
# interpreter (default: the scripts venv, then python3); it needs grpcio-tools.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-${XKV_CACHE:-$HOME/.cache/xkv}/venv/bin/python}
[[ -x $py ]] || py=python3
exec "$py" "$here/generate_stubs.py" "$@"
