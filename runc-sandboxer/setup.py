"""The ``[sandbox-parent]`` helper (src/kuasar_runc_sandboxer/native/sandbox_parent.c), built into the package as
the executable ``sandbox-parent`` by the build helper the C programs of this repository share
(shared/native_build.py)."""
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "shared"))
from native_build import BuildExecutables, program  # noqa: E402  (found through the line above)

setup(ext_modules=[program("kuasar_runc_sandboxer.sandbox-parent",
                           ["src/kuasar_runc_sandboxer/native/sandbox_parent.c"])],
      cmdclass={"build_ext": BuildExecutables})
