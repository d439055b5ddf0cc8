"""Kuasar shared package: everything the sandboxers have in common.

Layout, bottom up (lower layers never import higher ones; tests/packaging/test_import_boundaries.py
holds the exact order):
  api/        generated protobuf modules (containerd Sandbox/Task/Streaming APIs, ttrpc, CRI, Kuasar guest API)
  values      plain value types every layer shares (mounts, stdio, process status and exit, cgroup stats)
  errors      the one error tree and its mapping to gRPC/ttrpc status codes
  ids, config, daemon/{log,notify,signals,reaper,args}   small helpers
  mounts, cgroups, process, process_identity, statefiles   typed wrappers over kernel interfaces and files
  ttrpc/      asyncio ttrpc: transports -> framing -> connection -> client/server
  io/         FIFO and streaming stdio plumbing; daemon/run, the common start-up runner
  task/       the Task API (ttrpc v2/v3) over a TaskBackend, and the generic task-server machinery
  oci/        OCI runtimes (runc, runsc): command line, spec handling, the Task backend over them
  sandbox/    the Sandboxer interface, pod bookkeeping, the Sandbox API (gRPC) controller, the task-server supervisor
  task.main, sandbox.server   the two process mains every sandbox type calls
  ctl/        kuasar-ctl, an engine client that drives sandboxers like containerd's CRI plugin
"""

__version__ = "0.1.0"
