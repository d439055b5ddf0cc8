"""The request journal: calls with effects are executed at most once across task server restarts.

The task front (``kuasar-taskfront``, shared/native/taskfront.c) tags every Create/Start/Exec/Kill/
Delete/... with a ``kuasar-request-id`` and sends the call again when the task server died before answering. The
server records an id when it starts such a call and the answer when it finishes, one small file per
id under ``<dir>/.requests`` (tmpfs under /run: a killed process loses nothing it wrote). A replayed
id is then answered from its file, or, when the server died in the middle, settled by the Task
service against the container's real state (:class:`Pending`).
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Union

from kuasar_shared.statefiles import CorruptState, read_json

__all__ = ["RequestJournal", "Answer", "Pending", "REQUEST_ID_KEY"]

log = logging.getLogger(__name__)

#: the ttrpc metadata key the task front puts the request id in
REQUEST_ID_KEY = "kuasar-request-id"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,99}")


@dataclass(frozen=True)
class Answer:
    """A finished call: status code (0 = OK), error message, serialized response."""

    code: int
    message: str
    payload: bytes


@dataclass(frozen=True)
class Pending:
    """A call a previous server started and never answered: it may have run partly or fully."""


class RequestJournal:
    """Journal files under ``directory``; entries older than :attr:`keep_seconds` are pruned.

    The front replays only the calls of the connections it holds while the server is down, so an
    entry is useful for seconds; ten minutes leaves room for a slow restart.
    """

    keep_seconds = 600.0
    #: prune after this many finished calls
    prune_every = 256

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._finished = 0
        self.prune()

    @staticmethod
    def valid(request_id: str) -> bool:
        """Only ids the front makes (``<hex>-<n>-<n>``) name files."""
        return bool(_ID.fullmatch(request_id))

    def _path(self, request_id: str) -> str:
        return os.path.join(self.directory, request_id)

    def lookup(self, request_id: str) -> Union[Answer, Pending, None]:
        """What happened to ``request_id``: answered, started only, or never seen (None)."""
        try:
            if os.path.getsize(self._path(request_id)) == 0:
                return Pending()
            record = read_json(self._path(request_id))
            return Answer(int(record["code"]), str(record["message"]), base64.b64decode(record["payload"]))
        except FileNotFoundError:
            return None
        except (CorruptState, KeyError, TypeError, ValueError) as err:
            log.warning("request %s: unreadable journal entry (%s); settling it as interrupted", request_id, err)
            return Pending()

    def begin(self, request_id: str) -> None:
        """Record that the call is about to run (before any effect)."""
        os.close(os.open(self._path(request_id), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def finish(self, request_id: str, answer: Answer) -> None:
        """Record the call's answer (before it is sent).

        No fsync: the journal guards against the task server dying, not the machine (a reboot ends
        every container anyway), and an unsynced write survives a killed process.
        """
        path = self._path(request_id)
        tmp = os.path.join(self.directory, "." + request_id + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"code": answer.code, "message": answer.message,
                       "payload": base64.b64encode(answer.payload).decode()}, f)
        os.replace(tmp, path)
        self._finished += 1
        if self._finished % self.prune_every == 0:
            self.prune()

    def prune(self) -> None:
        """Drop entries older than :attr:`keep_seconds`."""
        horizon = time.time() - self.keep_seconds
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if entry.stat().st_mtime < horizon:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    pass
