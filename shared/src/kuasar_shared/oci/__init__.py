"""OCI runtime support shared by every sandbox type that runs an OCI runtime binary.

:mod:`.runtime` drives the binary's command line; :mod:`.spec` adapts ``config.json`` to a pod;
:mod:`.pod` finds a container's pod; :mod:`.task` is the Task API backend over a runtime CLI, built
on the generic task-server machinery of :mod:`kuasar_shared.task`.
"""
from __future__ import annotations

from kuasar_shared.oci.runtime import OciRuntime, StdioFds, error_from_output, read_pid_file
from kuasar_shared.oci.spec import (CONFIG_NAME, NAMESPACE_TYPES, clamp_oom_score_adj,
                                    drop_hostname_if_shared_uts, load_spec, namespace_path,
                                    own_oom_score_adj, replace_proc_ns_paths, rootfs_path, save_spec,
                                    set_cgroups_path, set_namespace_path)

__all__ = ["OciRuntime", "StdioFds", "error_from_output", "read_pid_file", "CONFIG_NAME",
           "NAMESPACE_TYPES", "clamp_oom_score_adj", "drop_hostname_if_shared_uts", "load_spec",
           "namespace_path", "own_oom_score_adj", "replace_proc_ns_paths", "rootfs_path", "save_spec",
           "set_cgroups_path", "set_namespace_path"]
