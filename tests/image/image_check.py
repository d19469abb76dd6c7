#!/usr/bin/env python3
"""Checks an OCI archive of scripts/build-image without running it:

  image_check.py ARCHIVE DOCKERFILE REVISION

- one manifest of three gzip layers (Debian, CUDA libraries, /opt/xkv), annotated with version,
  revision (= REVISION), source and created;
- its runtime config is the one DOCKERFILE's last stage declares: USER, WORKDIR, ENTRYPOINT, CMD,
  ENV, EXPOSE and the label names;
- no layer holds a compiler, C headers, a model, apt lists or caches, logs or a machine id;
- /opt/xkv/bin/xkv, the CUDA runtime libraries and the non-root user are there.
Prints the layers' sizes; exits non-zero listing every problem.
"""
import json
import re
import shlex
import sys
import tarfile

COMPILERS = re.compile(r"^usr/(local/)?bin/(cc|c\+\+|gcc|g\+\+|clang|clang\+\+|ld|as|nvcc)"
                       r"(-[0-9.]+)?$")
FORBIDDEN = [
    (re.compile(r"^usr/(local/)?include/."), "C headers"),
    (re.compile(r"\.gguf$"), "a model"),
    (re.compile(r"^var/lib/apt/lists/."), "apt lists"),
    (re.compile(r"^var/cache/apt/."), "apt caches"),
    (re.compile(r"^var/log/"), "a log"),
    (re.compile(r"(^|/)__pycache__/"), "Python byte-code"),
]


def dockerfile_runtime(path):
    """The last stage's runtime settings, as an OCI image config's fields."""
    text = re.sub(r"\\\n\s*", " ", open(path).read())
    stage = re.split(r"^FROM\s", text, flags=re.M)[-1]
    want = {"Env": [], "ExposedPorts": {}, "Labels": set()}
    for line in stage.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "USER":
            want["User"] = rest.strip()
        elif word == "WORKDIR":
            want["WorkingDir"] = rest.strip()
        elif word in ("ENTRYPOINT", "CMD"):
            want["Entrypoint" if word == "ENTRYPOINT" else "Cmd"] = json.loads(rest)
        elif word == "ENV":
            want["Env"] += shlex.split(rest)
        elif word == "EXPOSE":
            want["ExposedPorts"].update({f"{p}/tcp": {} for p in rest.split()})
        elif word == "LABEL":
            want["Labels"] |= {kv.split("=", 1)[0] for kv in shlex.split(rest)}
    return want


def main():
    archive, dockerfile, revision = sys.argv[1:]
    errors = []
    with tarfile.open(archive) as oci:
        def blob(digest):
            return oci.extractfile("./blobs/" + digest.replace(":", "/"))

        index = json.load(oci.extractfile("./index.json"))
        manifest = json.load(blob(index["manifests"][0]["digest"]))
        config = json.load(blob(manifest["config"]["digest"]))
        annotations = manifest.get("annotations", {})
        for k in ("version", "revision", "source", "created"):
            if not annotations.get(f"org.opencontainers.image.{k}"):
                errors.append(f"no annotation org.opencontainers.image.{k}")
        if annotations.get("org.opencontainers.image.revision") != revision:
            errors.append(f"revision annotation {annotations.get('org.opencontainers.image.revision')}"
                          f", want {revision}")
        layers = manifest["layers"]
        if len(layers) != 3 or any("tar+gzip" not in l["mediaType"] for l in layers):
            errors.append(f"want 3 gzip layers, got {[l['mediaType'] for l in layers]}")

        got = config["config"]
        for key, value in dockerfile_runtime(dockerfile).items():
            have = got.get(key)
            if key == "Env":
                have, value = sorted(have or []), sorted(value)
            elif key == "Labels":
                have = set(have or {})
            if have != value:
                errors.append(f"config {key}: image has {have}, {dockerfile} says {value}")

        files = {}
        for name, layer in zip(("debian", "cuda", "xkv"), layers):
            entries = tarfile.open(fileobj=blob(layer["digest"]), mode="r|gz")
            size = 0
            for e in entries:
                path = e.name.removeprefix("./")
                files[path] = e
                size += e.size
                if COMPILERS.match(path):
                    errors.append(f"layer {name}: compiler {path}")
                errors += [f"layer {name}: {what} {path}" for rx, what in FORBIDDEN
                           if not e.isdir() and rx.search(path)]
            print(f"image_check: layer {name}: {layer['size'] / 1e6:.1f} MB compressed, "
                  f"{size / 1e6:.1f} MB of files")
    for path in ("opt/xkv/bin/xkv", "opt/xkv/scripts/fetch-model", "opt/xkv/lib/libcudart.so.13",
                 "opt/xkv/lib/libcublas.so.13", "opt/xkv/lib/libcublasLt.so.13",
                 "opt/xkv/lib/libnccl.so.2", "usr/bin/python3", "etc/passwd"):
        if path not in files:
            errors.append(f"missing /{path}")
    if "etc/machine-id" in files and files["etc/machine-id"].size:
        errors.append("/etc/machine-id is not empty")
    print(f"image_check: total {sum(l['size'] for l in layers) / 1e6:.1f} MB compressed")
    for e in errors:
        print(f"image_check: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
