"""What the C programs' Python side shares: the NUL-ended name=value fields (a round trip, garbage refused
by name) and finding a program built into a package."""
from __future__ import annotations

import os

import pytest

from kuasar_shared.native import decode, encode, program


def test_fields_round_trip_and_refuse_garbage() -> None:
    fields = [("ready", "1"), ("warning", "a=b\nc"), ("warning", "")]
    assert encode(fields) == b"ready=1\0warning=a=b\nc\0warning=\0"
    assert decode(encode(fields)) == fields
    for data, message in ((b"", "empty"), (b"a=1", "not ended by a NUL"), (b"a=1\0junk\0", "field 2 .* name=value"),
                          (b"=x\0", "field 1"), (b"a=\xff\0", "not UTF-8")):
        with pytest.raises(ValueError, match=message):
            decode(data)
    for name, value in (("", "x"), ("a=b", "x"), ("a", "x\0y")):
        with pytest.raises(ValueError, match="names must be non-empty"):
            encode([(name, value)])


def test_a_program_is_found_beside_its_module_or_named_missing(tmp_path) -> None:
    module = str(tmp_path / "module.py")
    built = tmp_path / "tool"
    built.write_text("#!/bin/sh\n")
    with pytest.raises(FileNotFoundError, match=f"no executable {built} .reinstall kuasar-x with a C compiler: "
                                                f"it builds native/tool.c"):
        program(module, "tool", "kuasar-x", "native/tool.c")  # there, but not executable
    os.chmod(built, 0o755)
    assert program(module, "tool", "kuasar-x", "native/tool.c") == str(built)
