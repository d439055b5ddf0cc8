"""Kuasar shared package: everything the sandboxers have in common.

Layout (lower layers never import higher ones):
  api/        generated protobuf modules (containerd Sandbox/Task/Streaming APIs, ttrpc, CRI, Kuasar guest API)
  values      plain value types every layer shares (mounts, stdio, process status and exit, cgroup stats)
  errors      the one error tree and its mapping to gRPC/ttrpc status codes
  ttrpc/      asyncio ttrpc: transports -> framing -> connection -> client/server
  sandbox/    the Sandboxer interface and the Sandbox API (gRPC) controller
  task/       the Task API (ttrpc v2/v3) service over a TaskBackend interface; io/ FIFO + streaming plumbing
  daemon/     the common start-up runner: arguments, logging, signals, sd_notify, watchdog
  store, config, ids, cgroups, mounts, oci   small typed helpers over files and kernel interfaces
  ctl/        kuasar-ctl, an engine client that drives sandboxers like containerd's CRI plugin
"""

__version__ = "0.1.0"
