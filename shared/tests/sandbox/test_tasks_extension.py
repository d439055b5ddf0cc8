"""Tests of kuasar_shared.sandbox.tasks_extension: the extensions.tasks JSON contract and its diff."""
from __future__ import annotations

import json

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.sandbox.api import ProcessResource, TaskResource, TaskResources
from kuasar_shared.sandbox.tasks_extension import diff, encode_tasks, parse_tasks
from kuasar_shared.values import Mount

FULL = {"tasks": [{
    "task_id": "c1",
    "spec": {"ociVersion": "1.0.2", "process": {"args": ["sleep", "60"]}},
    "rootfs": [{"type": "overlay", "source": "overlay", "target": "",
                "options": ["lowerdir=/l", "upperdir=/u", "workdir=/w"]}],
    "stdin": "", "stdout": "/run/io/c1-stdout", "stderr": "/run/io/c1-stderr",
    "processes": [{"exec_id": "e1", "spec": {"args": ["echo", "hi"]},
                   "stdout": "ttrpc+unix:///run/t.sock?streaming_id=e1-stdout"}],
}]}


def test_parse_full_document() -> None:
    parsed = parse_tasks(json.dumps(FULL).encode())
    (task,) = parsed.tasks
    assert task.task_id == "c1" and task.spec["process"]["args"] == ["sleep", "60"]
    assert task.rootfs == (Mount("overlay", "overlay", "", ("lowerdir=/l", "upperdir=/u", "workdir=/w")),)
    assert (task.stdin, task.stdout, task.stderr) == ("", "/run/io/c1-stdout", "/run/io/c1-stderr")
    assert task.processes == (ProcessResource(exec_id="e1", spec={"args": ["echo", "hi"]},
                                              stdout="ttrpc+unix:///run/t.sock?streaming_id=e1-stdout"),)
    assert parsed.task("c1") is task and parsed.task("nope") is None
    assert task.process("e1") is task.processes[0] and task.process("e2") is None


@pytest.mark.parametrize("value", [b"", b"  ", b"{}", b'{"tasks": null}', b'{"tasks": []}'])
def test_parse_empty(value: bytes) -> None:
    assert parse_tasks(value) == TaskResources()


def test_nulls_count_as_absent() -> None:
    doc = {"tasks": [{"task_id": "c1", "spec": None, "rootfs": None, "stdout": None, "processes": None}]}
    assert parse_tasks(json.dumps(doc).encode()) == TaskResources(tasks=(TaskResource(task_id="c1"),))


def test_encode_round_trip() -> None:
    parsed = parse_tasks(json.dumps(FULL).encode())
    assert parse_tasks(encode_tasks(parsed)) == parsed


@pytest.mark.parametrize("doc,field", [
    (b"{oops", "value is not valid JSON"),
    (b"\xff\xfe", "value is not valid JSON"),
    (b"[1]", "value must be a JSON object"),
    (b'{"tasks": {}}', "value.tasks must be a JSON array"),
    (b'{"tasks": [1]}', "tasks[0] must be a JSON object"),
    (b'{"tasks": [{}]}', "tasks[0].task_id is invalid"),
    (b'{"tasks": [{"task_id": 7}]}', "tasks[0].task_id must be a JSON string"),
    (b'{"tasks": [{"task_id": "a/b"}]}', "tasks[0].task_id is invalid"),
    (b'{"tasks": [{"task_id": ".."}]}', "tasks[0].task_id is invalid"),
    (b'{"tasks": [{"task_id": "c"}, {"task_id": "c"}]}', "tasks[1].task_id duplicates"),
    (b'{"tasks": [{"task_id": "c", "spec": []}]}', "tasks[0].spec must be a JSON object"),
    (b'{"tasks": [{"task_id": "c", "stdout": 1}]}', "tasks[0].stdout must be a JSON string"),
    (b'{"tasks": [{"task_id": "c", "rootfs": [{"source": "/x"}]}]}', "tasks[0].rootfs[0].type must not"),
    (b'{"tasks": [{"task_id": "c", "rootfs": ["x"]}]}', "tasks[0].rootfs[0] must be a JSON object"),
    (b'{"tasks": [{"task_id": "c", "rootfs": [{"type": "bind", "options": [1]}]}]}',
     "tasks[0].rootfs[0].options[0] must be a JSON string"),
    (b'{"tasks": [{"task_id": "c", "processes": [{"exec_id": "x\\u0000"}]}]}',
     "tasks[0].processes[0].exec_id is invalid"),
    (b'{"tasks": [{"task_id": "c", "processes": [{"exec_id": "e"}, {"exec_id": "e"}]}]}',
     "tasks[0].processes[1].exec_id duplicates"),
])
def test_invalid_documents_name_the_field(doc: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_tasks(doc)
    assert str(info.value).startswith("extensions.tasks: ")
    assert field in str(info.value)


def _tasks(*tasks: TaskResource) -> TaskResources:
    return TaskResources(tasks=tasks)


def test_diff_from_nothing() -> None:
    new = _tasks(TaskResource("c1"), TaskResource("c2", processes=(ProcessResource("e1"),)))
    change = diff(None, new)
    assert change.added_tasks == new.tasks and not change.removed_tasks
    assert not change.added_processes and not change.removed_processes
    assert change.old == TaskResources() and change.new is new and not change.empty


def test_diff_tasks_and_processes() -> None:
    old = _tasks(TaskResource("c1", processes=(ProcessResource("e1"), ProcessResource("e2"))),
                 TaskResource("c2"))
    new = _tasks(TaskResource("c1", processes=(ProcessResource("e2"), ProcessResource("e3"))),
                 TaskResource("c3", processes=(ProcessResource("e9"),)))
    change = diff(old, new)
    assert [t.task_id for t in change.added_tasks] == ["c3"]
    assert [t.task_id for t in change.removed_tasks] == ["c2"]
    assert [(t, p.exec_id) for t, p in change.added_processes] == [("c1", "e3")]
    assert [(t, p.exec_id) for t, p in change.removed_processes] == [("c1", "e1")]


def test_diff_same_list_is_empty() -> None:
    tasks = _tasks(TaskResource("c1", processes=(ProcessResource("e1"),)))
    assert diff(tasks, tasks).empty
