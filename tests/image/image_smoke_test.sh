#!/usr/bin/env bash
# ctest image_smoke: the runtime image, built and run here without a container daemon.
#   image_smoke_test.sh XKV_BIN MODEL
# 1. scripts/build-image --check-reproducible --xkv XKV_BIN: two builds from scratch give the same
#    layer digests;
# 2. tests/image/image_check.py: layers, annotations, the runtime config of k8s/Dockerfile, no
#    compilers, headers or caches;
# 3. skopeo pushes the archive to a loopback registry (Debian's docker-registry), Debian's podman
#    (runtime runc, cgroupfs, containers.conf here, a private store in a temporary directory)
#    pulls it from there and runs it: `xkv --help` (as user 10001) prints what XKV_BIN
#    prints; the init container's scripts/fetch-model finds MODEL's volume complete; `xkv serve`
#    on MODEL, mounted read-only at /opt/xkv/models, answers one Generate over
#    loopback from `xkv client generate` in a second container, with the text `XKV_BIN generate`
#    gives on the host (greedy, full cache).
# Needs root and Debian's archive; exits 77 (skipped) when not root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$1; model=$(readlink -f "$2")
say() { echo "image_smoke: $*"; }
fail() { echo "image_smoke: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { say "needs root (debootstrap, chroot, podman): skipped"; exit 77; }
[[ -f $model ]] || fail "no model at $2"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/xkv-image-test.XXXXXX")
export CONTAINERS_CONF=$here/containers.conf
podman=(podman --root "$tmp/storage" --runroot "$tmp/run" --tmpdir "$tmp/tmp" --storage-driver overlay)
registry=
cleanup() {
  [[ -z $registry ]] || { kill "$registry"; wait "$registry"; } 2>/dev/null || true
  "${podman[@]}" system reset --force >/dev/null 2>&1 || true
  rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT

start=$SECONDS
"$root/scripts/build-image" --xkv "$bin" --out "$tmp/out" --check-reproducible
archive=$(echo "$tmp"/out/xkv-*.oci.tar)
built=$((SECONDS - start))
python3 "$here/image_check.py" "$archive" "$root/k8s/Dockerfile" "$(git -C "$root" rev-parse HEAD)"

# The push of docs/operations.md, to a loopback registry (Debian's docker-registry), then the pull
# a node does.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'version: 0.1\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: "127.0.0.1:%s"}\n' \
  "$tmp/registry" "$port" > "$tmp/registry.yml"
docker-registry serve "$tmp/registry.yml" > "$tmp/registry.log" 2>&1 &
registry=$!
for _ in $(seq 1 100); do  # up to 10 s to listen
  (exec 3<> "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$registry" 2>/dev/null || fail "docker-registry exited: $(tail -3 "$tmp/registry.log")"
  sleep 0.1
done
image=127.0.0.1:$port/xkv:smoke
skopeo copy -q --dest-tls-verify=false "oci-archive:$archive" "docker://$image"
"${podman[@]}" pull -q --tls-verify=false "$image" >/dev/null
say "skopeo copy to a registry, podman pull from it: ok"
run=("${podman[@]}" run --rm --network=host)
[[ $("${run[@]}" --entrypoint id "$image" -u) == 10001 ]] || fail "the image does not run as 10001"
diff <("${run[@]}" "$image" --help 2>&1) <("$bin" --help 2>&1) || fail "xkv --help differs"
say "xkv --help in the image: ok"
# The init container's command on a volume that holds the model: checks its sha256, downloads nothing.
out=$("${run[@]}" --read-only -v "$(dirname "$model")":/opt/xkv/models:ro \
  --entrypoint /opt/xkv/scripts/fetch-model "$image" 2>&1) && [[ $out == *"model present"* ]] \
  || fail "scripts/fetch-model in the image does not accept the model volume: $out"
say "fetch-model in the image (read-only root, user 10001): ok"

"${podman[@]}" run -d --name xkv-smoke --network=host \
  -v "$(dirname "$model")":/opt/xkv/models:ro "$image" serve \
  --model "/opt/xkv/models/$(basename "$model")" --listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --admin-insecure-local >/dev/null
port=
for _ in $(seq 1 600); do  # up to 60 s for the model to load
  port=$("${podman[@]}" logs xkv-smoke 2>&1 | sed -n 's/.*serving Generation on port \([0-9]*\).*/\1/p')
  [[ -n $port ]] && break
  [[ $("${podman[@]}" inspect -f '{{.State.Running}}' xkv-smoke) == true ]] \
    || fail "xkv serve exited: $("${podman[@]}" logs xkv-smoke 2>&1 | tail -5)"
  sleep 0.1
done
[[ -n $port ]] || fail "xkv serve did not serve within 60 s"
prompt="The capital of France is"
got=$("${run[@]}" "$image" client generate --server "127.0.0.1:$port" --prompt "$prompt" \
  --max-tokens 16 --policy full)
want=$("$bin" generate --model "$model" --prompt "$prompt" --max-tokens 16 2>/dev/null)
[[ -n $want && $got == "$want" ]] || fail "Generate through the image gave '$got', want '$want'"
"${podman[@]}" stop -t 10 xkv-smoke >/dev/null
say "xkv serve in the image answered Generate over loopback: '${got//$'\n'/ }'"
say "ok (build twice + checks: ${built}s, in all $((SECONDS - start))s)"
