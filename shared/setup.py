"""The task front (native/taskfront.c), built into the package as the executable ``kuasar-taskfront`` by the build
helper the C programs of this repository share (native_build.py, beside this file). It needs nothing but libc."""
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from native_build import BuildExecutables, program  # noqa: E402  (found through the line above)

setup(ext_modules=[program("kuasar_shared.kuasar-taskfront", ["native/taskfront.c"])],
      cmdclass={"build_ext": BuildExecutables})
