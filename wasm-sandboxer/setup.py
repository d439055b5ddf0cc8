"""The native fork-server and runner (src/kuasar_wasm_sandboxer/native/runner.c), built into the package as
``_native``: a plain shared library that the fork-server loads with ctypes (not a Python extension module;
it is never imported). It needs no wasmtime headers or link-time library: wasmtime's C API is resolved at
run time from the wasmtime wheel's own library."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("kuasar_wasm_sandboxer._native",
                             sources=["src/kuasar_wasm_sandboxer/native/runner.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
                             libraries=["dl"])])
