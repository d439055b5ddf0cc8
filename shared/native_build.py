"""Build-time helper for the sandbox types that ship a small C program inside their Python package (kuasar-shared's
``kuasar-taskfront``, wasm-sandboxer's ``wasm-forkserver``, runc-sandboxer's ``sandbox-parent``): their setup.py
loads this file from the source tree (it is not part of the kuasar_shared package, and not installed).

Each program is declared as an :class:`~setuptools.Extension` only so that pip compiles it, in editable installs
too; :class:`BuildExecutables` links it as an executable named without the extension-module suffix, into the package
folder."""
import os

from setuptools import Extension
from setuptools.command.build_ext import build_ext

__all__ = ["BuildExecutables", "program"]

#: every program is built with these and no warning may pass
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]


def program(dotted_name, sources, libraries=()):
    """The Extension that builds ``package.program-name`` (an executable) from ``sources``."""
    return Extension(dotted_name, sources=list(sources), extra_compile_args=CFLAGS, libraries=list(libraries))


class BuildExecutables(build_ext):
    """Links every extension of the project as a program: the projects using it have no extension modules."""

    def get_ext_filename(self, fullname):
        # called with the full dotted name and, by get_ext_fullpath, with its last part alone
        return os.path.join(*fullname.split("."))

    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        objects = self.compiler.compile(ext.sources, output_dir=self.build_temp,
                                        extra_postargs=ext.extra_compile_args)
        self.compiler.link_executable(objects, os.path.basename(target), output_dir=os.path.dirname(target),
                                      libraries=ext.libraries)
