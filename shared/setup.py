"""The task front (src/kuasar_shared/native/taskfront.c), built into the package as the executable
``kuasar-taskfront`` (not a Python extension module: an Extension only so that pip compiles it, in editable
installs too). It needs nothing but libc."""
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

EXECUTABLE = "kuasar_shared.kuasar-taskfront"


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
        self.compiler.link_executable(objects, os.path.basename(target), output_dir=os.path.dirname(target))


setup(ext_modules=[Extension(EXECUTABLE, sources=["src/kuasar_shared/native/taskfront.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"])],
      cmdclass={"build_ext": BuildExecutable})
