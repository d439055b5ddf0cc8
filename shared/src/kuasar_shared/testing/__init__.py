"""Test helpers shared by every package: fakes named as such, reusable suites, trace replay helpers.

  memory       InMemorySandboxer, a toy Sandboxer keeping pods in memory
  conformance  SandboxerConformance, the Sandbox API suite every sandbox type runs (with pytest-asyncio)
  traces       loading the real containerd traces and rendering messages like they do
  oci          a busybox rootfs, FIFOs and reading them, for tests that run real containers
  mux          a ttrpc server behind a real host/guest mux pair (the vmm guest's transport)

Every module imports without pytest (they ship in kuasar_shared): pytest is imported where a test uses it.
"""
from __future__ import annotations

from kuasar_shared.testing.memory import InMemorySandboxer

__all__ = ["InMemorySandboxer"]
