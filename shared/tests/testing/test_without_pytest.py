"""kuasar_shared.testing ships with kuasar_shared: each of its modules imports where pytest is not installed."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import kuasar_shared.testing

#: import each module named on the command line in an interpreter where pytest cannot be imported
WITHOUT_PYTEST = """
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pytest", "_pytest", "pytest_asyncio"):
            raise ImportError("blocked for the test: " + name)
sys.meta_path.insert(0, Block())
for name in sys.argv[1:]:
    importlib.import_module(name)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("pytest", "_pytest", "pytest_asyncio")))
"""


def test_every_testing_module_imports_without_pytest() -> None:
    modules = sorted(m.name for m in pkgutil.iter_modules(kuasar_shared.testing.__path__, "kuasar_shared.testing."))
    assert "kuasar_shared.testing.conformance" in modules and "kuasar_shared.testing.oci" in modules
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PYTEST, "kuasar_shared.testing", *modules],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
