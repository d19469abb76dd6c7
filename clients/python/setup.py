"""Generates the gRPC stubs from ../../proto (or $XKV_PROTO_DIR) before the package is built."""
import pathlib
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import generate_stubs  # noqa: E402


class BuildWithStubs(build_py):
    def run(self):
        generate_stubs.generate()
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
