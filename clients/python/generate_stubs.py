#!/usr/bin/env python3
"""Generates the gRPC stubs of proto/xkv/v1/*.proto into xkv_client/_proto/ (grpcio-tools).

protoc writes `from xkv.v1 import generation_pb2`; the imports are rewritten to the package path
(`from xkv_client._proto.xkv.v1 import ...`) so that the stubs live inside xkv_client. The output
depends only on the .proto files and the grpcio-tools version (deterministic; not committed).

Usage: python generate_stubs.py [--proto-dir DIR] [--out-dir DIR]
"""
import argparse
import os
import pathlib
import re
import sys

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto"
DEFAULT_OUT_DIR = HERE / "xkv_client" / "_proto"
PROTOS = ["xkv/v1/generation.proto", "xkv/v1/admin.proto"]
PACKAGE = "xkv_client._proto"


def generate(proto_dir=DEFAULT_PROTO_DIR, out_dir=DEFAULT_OUT_DIR):
    from grpc_tools import protoc  # imported late: only generation needs grpcio-tools

    proto_dir = pathlib.Path(os.environ.get("XKV_PROTO_DIR", proto_dir)).resolve()
    out_dir = pathlib.Path(out_dir).resolve()
    for p in PROTOS:
        if not (proto_dir / p).is_file():
            raise FileNotFoundError(f"{proto_dir / p} not found (set XKV_PROTO_DIR)")
    (out_dir / "xkv" / "v1").mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(protoc.__file__).resolve().parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"] + PROTOS
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed: " + " ".join(args))
    for d in (out_dir / "xkv", out_dir / "xkv" / "v1"):
        (d / "__init__.py").write_text("")
    pattern = re.compile(r"^from xkv\.v1 import ", re.M)
    for f in sorted((out_dir / "xkv" / "v1").glob("*.py*")):
        text = f.read_text()
        fixed = pattern.sub(f"from {PACKAGE}.xkv.v1 import ", text)
        if fixed != text:
            f.write_text(fixed)
    return out_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proto-dir", default=str(DEFAULT_PROTO_DIR))
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT_DIR))
    a = ap.parse_args()
    out = generate(a.proto_dir, a.out_dir)
    print(f"generated stubs in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
