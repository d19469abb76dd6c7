# Shared helpers for scripts/*. Source, do not run.
log() { printf '\033[1m[xkv]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[xkv] error:\033[0m %s\n' "$*" >&2; exit 1; }
xkv_cache() { local c=${XKV_CACHE:-$HOME/.cache/xkv}; mkdir -p "$c"; echo "$c"; }
xkv_venv() { echo "$(xkv_cache)/venv"; }
# The pinned llama-cpp-python source distribution (version in scripts/setup), downloaded once into
# the cache; prints its path. setup compiles it and fetch-llama-test-files unpacks test files from
# the same file, so it is fetched only once.
xkv_llama_cpp_sdist() {
  local here version sdist
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  version=$(sed -n 's/^llama_cpp_version=//p' "$here/setup")
  [[ -n $version ]] || die "no llama_cpp_version in scripts/setup"
  sdist=$(xkv_cache)/sdist/llama_cpp_python-$version.tar.gz
  if [[ ! -f $sdist ]]; then
    log "downloading the llama-cpp-python $version source distribution"
    "$(xkv_venv)/bin/pip" download -q "llama-cpp-python==$version" --no-binary :all: --no-deps \
      -d "$(xkv_cache)/sdist" >&2 || die "could not download llama-cpp-python $version"
  fi
  echo "$sdist"
}
