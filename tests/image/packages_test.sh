#!/usr/bin/env bash
# ctest k8s_image_packages: the runtime image's package list is right, and it is the one list both
# image builds install.
#   packages_test.sh XKV_BIN
# - scripts/image/runtime-packages [libraries] = the Debian packages of XKV_BIN's shared libraries
#   (scripts/image/binary-deps check: ldd, dpkg -S);
# - k8s/Dockerfile's runtime stage and scripts/build-image both install it through
#   scripts/image/configure-rootfs (and lay out /opt/xkv through scripts/image/stage).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
fail() { echo "k8s_image_packages: $*" >&2; exit 1; }

"$root/scripts/image/binary-deps" check "$1"
runtime_stage=$(awk '/^FROM /{s=""} {s=s $0 "\n"} END{printf "%s", s}' "$root/k8s/Dockerfile")
grep -qx 'COPY scripts/image/configure-rootfs scripts/image/runtime-packages /tmp/image/' \
  <<< "$runtime_stage" || fail "k8s/Dockerfile's runtime stage does not copy the package list"
grep -qx 'RUN /tmp/image/configure-rootfs && rm -rf /tmp/image' <<< "$runtime_stage" \
  || fail "k8s/Dockerfile's runtime stage does not run scripts/image/configure-rootfs"
grep -q 'scripts/image/stage /build/xkv' "$root/k8s/Dockerfile" \
  || fail "k8s/Dockerfile does not lay out /opt/xkv with scripts/image/stage"
for f in configure-rootfs runtime-packages stage; do
  grep -q "\"\$here/image/$f\"" "$root/scripts/build-image" || fail "scripts/build-image does not use $f"
done
echo "k8s_image_packages: $(grep -c '^[a-z0-9]' "$root/scripts/image/runtime-packages") packages," \
  "the same list in k8s/Dockerfile and scripts/build-image: ok"
