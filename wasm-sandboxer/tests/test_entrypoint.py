"""Spec mapping: entrypoint resolution inside the rootfs, module kinds, argv/env/cwd, preopens, limits."""
from __future__ import annotations

import os

import pytest

from kuasar_shared.errors import InvalidArgument

from kuasar_wasm_sandboxer.entrypoint import MAX_ARGS_BYTES, Preopen, build_run_spec, resolve_in_root
from kuasar_wasm_sandboxer.protocol import decode


def _root(tmp_path) -> str:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "m.wasm").write_bytes(b"\0asm\x01\0\0\0")
    (root / "bin" / "c.wasm").write_bytes(b"\0asm\x0d\0\x01\0")
    (root / "bin" / "t.wat").write_text("(module)")
    os.symlink("/bin/m.wasm", root / "bin" / "abs-link.wasm")
    os.symlink("../../../m.wasm", root / "bin" / "out.wasm")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    return str(root)


def test_resolve_in_root(tmp_path) -> None:
    root = _root(tmp_path)
    assert resolve_in_root(root, "/bin/m.wasm") == os.path.join(root, "bin", "m.wasm")
    assert resolve_in_root(root, "bin/./x/../m.wasm") == os.path.join(root, "bin", "m.wasm")
    assert resolve_in_root(root, "/bin/abs-link.wasm") == os.path.join(root, "bin", "m.wasm")
    for bad, message in (("../../etc/passwd", "escapes"), ("/bin/out.wasm", "escapes"), ("/loop1", "too many")):
        with pytest.raises(InvalidArgument, match=message):
            resolve_in_root(root, bad)


def test_run_spec_mapping(tmp_path) -> None:
    root = _root(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    mounts = [{"destination": "/proc", "type": "proc", "source": "proc"},
              {"destination": "/etc/hosts", "type": "bind", "source": str(tmp_path / "root" / "bin" / "t.wat")},
              {"destination": "/mnt/x/", "type": "none", "source": str(shared), "options": ["rbind", "ro"]}]
    spec = build_run_spec("c1", {"args": ["/bin/m.wasm", "a"], "env": ["A=1", "B=x=y"], "cwd": "/work"}, root,
                          mounts, readonly_root=True, memory_limit=1 << 20)
    assert spec.kind == "wasm" and spec.argv == ["/bin/m.wasm", "a"]
    assert spec.env == [("A", "1"), ("B", "x=y"), ("PWD", "/work")]
    assert spec.preopens == (Preopen(root, "/", True), Preopen(str(shared), "/mnt/x", True))
    path = str(tmp_path / "init.run")
    spec.save(path)
    with open(path, "rb") as handle:  # the fields the native runner reads (native/runner.c, load_spec)
        assert decode(handle.read()) == [
            ("name", "c1"), ("module", spec.module), ("kind", "wasm"), ("arg", "/bin/m.wasm"), ("arg", "a"),
            ("env", "A=1"), ("env", "B=x=y"), ("env", "PWD=/work"),
            ("preopen", "ro"), ("host", root), ("guest", "/"), ("preopen", "ro"), ("host", str(shared)),
            ("guest", "/mnt/x"), ("memory_limit", str(1 << 20)), ("cache_entry", ""), ("cache_store", "")]
    assert build_run_spec("c1", {"args": ["t.wat"], "cwd": "/bin", "env": ["PWD=/x"]}, os.path.join(root, "bin"),
                          []).env == [("PWD", "/x")]


@pytest.mark.parametrize("process,message", [
    ({"args": ["/bin/c.wasm"]}, "component"),
    ({"args": ["/bin/none.wasm"]}, "does not exist"),
    ({"args": ["/bin"]}, "directory"),
    ({"args": ["/bin/m.wasm"], "env": ["NOEQUALS"]}, "KEY=VALUE"),
    ({"args": ["/bin/m.wasm", "a\0b"]}, "NUL"),
    ({"args": ["/bin/m.wasm"], "env": ["A=" + "x" * MAX_ARGS_BYTES]}, "at most"),
    ({"args": [""]}, "empty"),
])
def test_bad_process(tmp_path, process, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        build_run_spec("c1", process, _root(tmp_path), [])
