"""The native fork-server and runner (src/kuasar_wasm_sandboxer/native/runner.c), built into the package as the
executable ``wasm-forkserver`` (not a Python extension module: an Extension only so that pip compiles it, in
editable installs too). It needs no wasmtime headers or link-time library: wasmtime's C API is resolved at
run time from the wasmtime wheel's own library."""
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXECUTABLE = "kuasar_wasm_sandboxer.wasm-forkserver"


class BuildExecutable(build_ext):
    """Links :data:`EXECUTABLE` as a program, named without the extension-module suffix."""

    def get_ext_filename(self, fullname):
        # called with the full dotted name and, by get_ext_fullpath, with its last part alone
        if fullname.split(".")[-1] == EXECUTABLE.split(".")[-1]:
            return os.path.join(*fullname.split("."))
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if ext.name != EXECUTABLE:
            return super().build_extension(ext)
        target = self.get_ext_fullpath(ext.name)
        objects = self.compiler.compile(ext.sources, output_dir=self.build_temp,
                                        extra_postargs=ext.extra_compile_args)
        self.compiler.link_executable(objects, os.path.basename(target), output_dir=os.path.dirname(target),
                                      libraries=ext.libraries)


setup(ext_modules=[Extension(EXECUTABLE, sources=["src/kuasar_wasm_sandboxer/native/runner.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"], libraries=["dl"])],
      cmdclass={"build_ext": BuildExecutable})
