"""The small C programs the sandbox types ship inside their packages (wasm's ``wasm-forkserver``, runc's
``sandbox-parent``; kuasar-shared's own task front, ``kuasar-taskfront``, beside this module): where the package
put them, and the messages they speak with Python, a sequence of ``name=value`` fields, each ended by a NUL byte,
which C parses without a library (names repeat where a list is meant). Their setup.py builds them with the source
tree's ``shared/native_build.py``."""
from __future__ import annotations

import os
from typing import Iterable

__all__ = ["program", "encode", "decode", "Fields"]

Fields = list[tuple[str, str]]


def program(module_file: str, name: str, distribution: str, source: str) -> str:
    """The path of the program ``name`` built beside ``module_file`` (a module's ``__file__``).

    :raise FileNotFoundError: it was not built (``distribution`` was installed without its C part,
        ``source``).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(module_file)), name)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"no executable {path} (reinstall {distribution} with a C compiler: "
                                f"it builds {source})")
    return path


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    """``fields`` in wire form.

    :raise ValueError: a name that is empty or holds ``=`` or NUL, a value holding NUL.
    """
    parts = []
    for name, value in fields:
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"field {name!r}={value[:40]!r}: names must be non-empty without '=' or NUL, "
                             f"values without NUL")
        parts.append(f"{name}={value}\0".encode())
    return b"".join(parts)


def decode(data: bytes) -> Fields:
    """The fields in ``data``. :raise ValueError: naming what is malformed."""
    if not data:
        raise ValueError("malformed fields: the message is empty")
    if not data.endswith(b"\0"):
        raise ValueError("malformed fields: the last field is not ended by a NUL byte")
    fields = []
    for number, raw in enumerate(data[:-1].split(b"\0"), 1):
        name, sep, value = raw.partition(b"=")
        if not name or not sep:
            raise ValueError(f"malformed fields: field {number} ({raw[:40]!r}) is not name=value")
        try:
            fields.append((name.decode(), value.decode()))
        except UnicodeDecodeError as err:
            raise ValueError(f"malformed fields: field {number} is not UTF-8: {err}") from None
    return fields
