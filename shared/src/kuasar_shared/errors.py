"""The one error tree of Kuasar and THE table that maps it to gRPC / ttrpc status codes.

Logic raises these typed errors; only the protocol edges (the Sandbox API controller, the ttrpc
server) turn them into wire statuses, through :func:`code_of`. Every error carries a message a
person can act on.

    KuasarError
     +-- NotFound              (5  NOT_FOUND)
     +-- AlreadyExists         (6  ALREADY_EXISTS)
     +-- InvalidArgument       (3  INVALID_ARGUMENT)
     +-- FailedPrecondition    (9  FAILED_PRECONDITION)   wrong state for the call
     +-- ResourceExhausted     (8  RESOURCE_EXHAUSTED)    e.g. oversized ttrpc frame
     +-- Unimplemented         (12 UNIMPLEMENTED)
     +-- Unavailable           (14 UNAVAILABLE)           peer gone, connection closed
     +-- DeadlineExceeded      (4  DEADLINE_EXCEEDED)
     +-- Cancelled             (1  CANCELLED)
     +-- Internal              (13 INTERNAL)
"""
from __future__ import annotations

import enum

__all__ = [
    "Code", "KuasarError", "NotFound", "AlreadyExists", "InvalidArgument", "FailedPrecondition",
    "ResourceExhausted", "Unimplemented", "Unavailable", "DeadlineExceeded", "Cancelled", "Internal",
    "code_of", "from_code",
]


class Code(enum.IntEnum):
    """gRPC canonical status codes (ttrpc uses the same numbers)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class KuasarError(Exception):
    """Base of all errors that cross a protocol edge."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(KuasarError):
    code = Code.NOT_FOUND


class AlreadyExists(KuasarError):
    code = Code.ALREADY_EXISTS


class InvalidArgument(KuasarError):
    code = Code.INVALID_ARGUMENT


class FailedPrecondition(KuasarError):
    code = Code.FAILED_PRECONDITION


class ResourceExhausted(KuasarError):
    code = Code.RESOURCE_EXHAUSTED


class Unimplemented(KuasarError):
    code = Code.UNIMPLEMENTED


class Unavailable(KuasarError):
    code = Code.UNAVAILABLE


class DeadlineExceeded(KuasarError):
    code = Code.DEADLINE_EXCEEDED


class Cancelled(KuasarError):
    code = Code.CANCELLED


class Internal(KuasarError):
    code = Code.INTERNAL


_BY_CODE = {cls.code: cls for cls in (NotFound, AlreadyExists, InvalidArgument, FailedPrecondition,
                                      ResourceExhausted, Unimplemented, Unavailable, DeadlineExceeded,
                                      Cancelled, Internal)}


def code_of(exc: BaseException) -> Code:
    """The wire status code for an exception; anything untyped is INTERNAL."""
    if isinstance(exc, KuasarError):
        return exc.code
    return Code.INTERNAL


def from_code(code: int, message: str) -> KuasarError:
    """Rebuild a typed error from a status received on the wire (client side)."""
    try:
        cls = _BY_CODE[Code(code)]
    except (ValueError, KeyError):
        err = KuasarError(message)
        try:
            err.code = Code(code)
        except ValueError:
            err.code = Code.UNKNOWN
        return err
    return cls(message)
