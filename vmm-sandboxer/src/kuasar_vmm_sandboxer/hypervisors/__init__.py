"""Hypervisor adapters; each lives in its own package with the same module names (qemu first)."""
