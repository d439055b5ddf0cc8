"""The native fork-server and runner (src/kuasar_wasm_sandboxer/native/runner.c), built into the package as the
executable ``wasm-forkserver`` by the build helper the C programs of this repository share
(shared/native_build.py). It needs no wasmtime headers or link-time library: wasmtime's C API is resolved at
run time from the wasmtime wheel's own library."""
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "shared"))
from native_build import BuildExecutables, program  # noqa: E402  (found through the line above)

setup(ext_modules=[program("kuasar_wasm_sandboxer.wasm-forkserver", ["src/kuasar_wasm_sandboxer/native/runner.c"],
                           libraries=["dl"])],
      cmdclass={"build_ext": BuildExecutables})
