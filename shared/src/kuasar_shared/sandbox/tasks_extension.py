"""Kuasar's ``extensions.tasks`` contract: parse, validate and diff the pod's container list.

Kuasar's engines (iSulad, the Kuasar containerd fork) announce every container and exec process
ahead of the task API with ``Controller.Update{fields: ["extensions.tasks"]}``; the Any's value is
JSON (its type_url is whatever the engine chose, e.g. iSulad's
``github.com/containerd/containerd/Tasks``, and is ignored). The message always carries the FULL
desired list; :func:`diff` turns two lists into what must be added and removed. Every key is
optional (``null`` counts as absent); ids become paths later, so they are validated here with
:func:`kuasar_shared.ids.validate_id`, and every error names the offending field.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from google.protobuf import any_pb2

from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.api.containerd.types import sandbox_pb2 as types_sandbox_pb2
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.ids import validate_id
from kuasar_shared.sandbox.api import ProcessResource, TaskDiff, TaskResource, TaskResources
from kuasar_shared.values import Mount

__all__ = ["TASKS_EXTENSION", "TASKS_TYPE_URL", "parse_tasks", "encode_tasks", "update_request", "diff"]

#: The key in ``Sandbox.extensions`` and the value in ``ControllerUpdateRequest.fields``.
TASKS_EXTENSION = "tasks"
#: The Any type_url iSulad sends (ignored on receipt; used when we send).
TASKS_TYPE_URL = "github.com/containerd/containerd/Tasks"

_STDIO = ("stdin", "stdout", "stderr")


def _bad(where: str, what: str) -> InvalidArgument:
    return InvalidArgument("extensions.tasks: %s %s" % (where, what))


def _optional(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _bad("%s.%s" % (where, key), "must be a JSON %s, got %s"
                   % (_JSON_NAMES[kind], type(value).__name__))
    return value


_JSON_NAMES = {str: "string", list: "array", dict: "object", int: "number"}


def _checked_id(value: str, kind: str, where: str) -> str:
    try:
        return validate_id(value, kind)
    except InvalidArgument as err:
        raise _bad(where, "is invalid: %s" % err) from err


def _mount(obj: Any, where: str) -> Mount:
    if not isinstance(obj, dict):
        raise _bad(where, "must be a JSON object")
    options = _optional(obj, "options", list, where)
    for i, opt in enumerate(options):
        if not isinstance(opt, str):
            raise _bad("%s.options[%d]" % (where, i), "must be a JSON string")
    mount_type = _optional(obj, "type", str, where)
    source = _optional(obj, "source", str, where)
    if not mount_type:
        raise _bad("%s.type" % where, "must not be empty")
    return Mount(type=mount_type, source=source, target=_optional(obj, "target", str, where),
                 options=tuple(options))


def _process(obj: Any, where: str) -> ProcessResource:
    if not isinstance(obj, dict):
        raise _bad(where, "must be a JSON object")
    exec_id = _checked_id(_optional(obj, "exec_id", str, where), "exec", where + ".exec_id")
    stdio = {key: _optional(obj, key, str, where) for key in _STDIO}
    return ProcessResource(exec_id=exec_id, spec=_optional(obj, "spec", dict, where), **stdio)


def _task(obj: Any, where: str) -> TaskResource:
    if not isinstance(obj, dict):
        raise _bad(where, "must be a JSON object")
    task_id = _checked_id(_optional(obj, "task_id", str, where), "container", where + ".task_id")
    rootfs = tuple(_mount(m, "%s.rootfs[%d]" % (where, i))
                   for i, m in enumerate(_optional(obj, "rootfs", list, where)))
    processes = []
    seen: set[str] = set()
    for i, p in enumerate(_optional(obj, "processes", list, where)):
        proc = _process(p, "%s.processes[%d]" % (where, i))
        if proc.exec_id in seen:
            raise _bad("%s.processes[%d].exec_id" % (where, i), "duplicates exec id %r" % proc.exec_id)
        seen.add(proc.exec_id)
        processes.append(proc)
    stdio = {key: _optional(obj, key, str, where) for key in _STDIO}
    return TaskResource(task_id=task_id, spec=_optional(obj, "spec", dict, where), rootfs=rootfs,
                        processes=tuple(processes), **stdio)


def parse_tasks(value: bytes) -> TaskResources:
    """Decode and validate the JSON value of the ``tasks`` extension.

    :param value: the Any's value bytes (UTF-8 JSON); empty bytes mean an empty list.
    :raise InvalidArgument: when the bytes are not JSON, a field has the wrong JSON type, an id is
        invalid or duplicated, or a rootfs mount has no type; the message names the field
        (``extensions.tasks: tasks[1].processes[0].exec_id ...``).
    :return: the validated list.
    """
    if not value.strip():
        return TaskResources()
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, ValueError) as err:
        raise _bad("value", "is not valid JSON: %s" % err) from err
    if not isinstance(doc, dict):
        raise _bad("value", "must be a JSON object with a \"tasks\" array")
    tasks = []
    seen: set[str] = set()
    for i, t in enumerate(_optional(doc, "tasks", list, "value")):
        task = _task(t, "tasks[%d]" % i)
        if task.task_id in seen:
            raise _bad("tasks[%d].task_id" % i, "duplicates task id %r" % task.task_id)
        seen.add(task.task_id)
        tasks.append(task)
    return TaskResources(tasks=tuple(tasks))


def _mount_json(mount: Mount) -> dict[str, Any]:
    return {"type": mount.type, "source": mount.source, "target": mount.target,
            "options": list(mount.options)}


def encode_tasks(resources: TaskResources) -> bytes:
    """The JSON form of a list (what :func:`parse_tasks` reads back), for persisting or sending."""
    doc = {"tasks": [
        {"task_id": t.task_id, "spec": t.spec, "rootfs": [_mount_json(m) for m in t.rootfs],
         "stdin": t.stdin, "stdout": t.stdout, "stderr": t.stderr,
         "processes": [{"exec_id": p.exec_id, "spec": p.spec, "stdin": p.stdin,
                        "stdout": p.stdout, "stderr": p.stderr} for p in t.processes]}
        for t in resources.tasks]}
    return json.dumps(doc, sort_keys=True).encode()


def update_request(sandbox_id: str, value: bytes) -> sandbox_pb2.ControllerUpdateRequest:
    """The engine side: ``Controller.Update`` carrying ``value`` (the JSON list) as ``extensions.tasks``."""
    sandbox = types_sandbox_pb2.Sandbox(sandbox_id=sandbox_id)
    sandbox.extensions[TASKS_EXTENSION].CopyFrom(any_pb2.Any(type_url=TASKS_TYPE_URL, value=value))
    return sandbox_pb2.ControllerUpdateRequest(sandbox_id=sandbox_id, sandbox=sandbox,
                                               fields=["extensions." + TASKS_EXTENSION])


def diff(old: Optional[TaskResources], new: TaskResources) -> TaskDiff:
    """What changes from ``old`` (None = nothing stored yet) to ``new``.

    A task id in ``new`` but not in ``old`` is added, one only in ``old`` is removed; for tasks in
    both, exec ids are compared the same way. Order follows the lists.
    """
    old = old if old is not None else TaskResources()
    added = tuple(t for t in new.tasks if old.task(t.task_id) is None)
    removed = tuple(t for t in old.tasks if new.task(t.task_id) is None)
    added_procs: list[tuple[str, ProcessResource]] = []
    removed_procs: list[tuple[str, ProcessResource]] = []
    for task in new.tasks:
        before = old.task(task.task_id)
        if before is None:
            continue
        added_procs.extend((task.task_id, p) for p in task.processes if before.process(p.exec_id) is None)
        removed_procs.extend((task.task_id, p) for p in before.processes if task.process(p.exec_id) is None)
    return TaskDiff(old=old, new=new, added_tasks=added, removed_tasks=removed,
                    added_processes=tuple(added_procs), removed_processes=tuple(removed_procs))
