"""An ``extensions.tasks`` change applied to a pod's share: the bundle of each added container is
prepared ahead of its task Create (all or none: a failure removes the ones already prepared), the
bundles of removed containers go."""
from __future__ import annotations

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.sandbox import TaskDiff

from kuasar_vmm_sandboxer import bundle

__all__ = ["apply_task_diff"]


def apply_task_diff(pod_dir: str, diff: TaskDiff) -> None:
    """:raise InvalidArgument: an added task has no rootfs, or its bundle cannot be prepared."""
    done: list[str] = []
    try:
        for task in diff.added_tasks:
            if not task.rootfs:
                raise InvalidArgument("extensions.tasks: task %s has no rootfs mounts" % task.task_id)
            bundle.prepare(pod_dir, task.task_id, task.spec, task.rootfs)
            done.append(task.task_id)
    except BaseException:
        for cid in done:
            bundle.remove(pod_dir, cid)
        raise
    for task in diff.removed_tasks:
        bundle.remove(pod_dir, task.task_id)
