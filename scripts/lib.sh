# Shared helpers for scripts/*. Source, do not run.
log() { printf '\033[1m[xkv]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[xkv] error:\033[0m %s\n' "$*" >&2; exit 1; }
xkv_cache() { local c=${XKV_CACHE:-$HOME/.cache/xkv}; mkdir -p "$c"; echo "$c"; }
xkv_venv() { echo "$(xkv_cache)/venv"; }
