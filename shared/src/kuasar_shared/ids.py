"""Validation of pod, container and exec ids before they are used in any path.

Every id that arrives in a request ends up as a directory or file name (``<dir>/<pod id>/``,
bundles, FIFOs, cgroups). Validating it once, at the edge, with one strict pattern is what makes
joining it into a path safe: no ``/``, no ``..``, no NUL, bounded length.
"""
from __future__ import annotations

import re

from kuasar_shared.errors import InvalidArgument

__all__ = ["ID_PATTERN", "MAX_ID_LENGTH", "validate_id", "is_valid_id"]

MAX_ID_LENGTH = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SHOWN = 40


def _shown(value: object) -> str:
    text = repr(value)
    if len(text) > _SHOWN:
        return text[:_SHOWN] + "...(%d characters)" % (len(value) if isinstance(value, str) else len(text))
    return text


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string that :func:`validate_id` accepts."""
    return (isinstance(value, str) and len(value) <= MAX_ID_LENGTH and ".." not in value
            and ID_PATTERN.fullmatch(value) is not None)


def validate_id(value: str, kind: str = "sandbox") -> str:
    """Return ``value`` unchanged when it is a safe id, else raise.

    :param value: the id received from a request.
    :param kind: what the id names ("sandbox", "container", "exec"), used in the message.
    :raise InvalidArgument: when the id is empty, longer than 128 characters, contains ``..``,
        or any character outside ``[A-Za-z0-9_.-]`` (``/`` and NUL included), or starts with
        ``.``, ``_`` or ``-``. The message names the kind and shows the value (truncated).
    """
    if not isinstance(value, str):
        raise InvalidArgument("invalid %s id %s: must be a string" % (kind, _shown(value)))
    if not value:
        raise InvalidArgument("invalid %s id: must not be empty" % kind)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument("invalid %s id %s: longer than %d characters"
                              % (kind, _shown(value), MAX_ID_LENGTH))
    if ".." in value:
        raise InvalidArgument("invalid %s id %s: must not contain '..'" % (kind, _shown(value)))
    if ID_PATTERN.fullmatch(value) is None:
        raise InvalidArgument("invalid %s id %s: must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
                              % (kind, _shown(value)))
    return value
