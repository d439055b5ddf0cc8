"""ids.validate_id: the one gate before any id touches a path."""
from __future__ import annotations

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.ids import is_valid_id, validate_id


@pytest.mark.parametrize("value", ["a", "pod1", "A.b_c-d", "0" * 128,
                                   "93f9cf9d7ed8a999f8f25aafb8016caa1244e2cf1f61923a89cee40450ae0fda"])
def test_accepts_valid_ids(value: str) -> None:
    assert validate_id(value) == value
    assert is_valid_id(value)


@pytest.mark.parametrize("value,why", [
    ("", "empty"),
    ("a/b", "must match"),
    ("../etc", "'..'"),
    ("a..b", "'..'"),
    ("..", "'..'"),
    (".", "must match"),
    (".hidden", "must match"),
    ("-rf", "must match"),
    ("_x", "must match"),
    ("a\0b", "must match"),
    ("a b", "must match"),
    ("ä", "must match"),
    ("x" * 129, "longer than 128"),
    ("x" * 200, "longer than 128"),
])
def test_rejects_bad_ids_naming_kind_and_value(value: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_id(value, "container")
    message = str(info.value)
    assert "container id" in message
    assert why in message
    assert not is_valid_id(value)


def test_long_value_is_truncated_in_message() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_id("y" * 200, "sandbox")
    assert len(str(info.value)) < 150
    assert "200 characters" in str(info.value)


def test_nul_is_shown_escaped() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_id("a\0b")
    assert "\\x00" in str(info.value)
    assert "\0" not in str(info.value)


def test_non_string_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        validate_id(None)  # type: ignore[arg-type]
