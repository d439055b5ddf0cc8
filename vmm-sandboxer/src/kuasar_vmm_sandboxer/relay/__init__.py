"""The host task relay (``vmm-task-relay``): one process for every vmm pod, separate from the sandboxer.

It serves each pod's task address ``ttrpc+unix://<dir>/<id>/task.sock`` and carries every engine
connection to the guest agent over the VM channel (a :class:`~kuasar_shared.ttrpc.mux.MuxConnection`
over the virtio-serial port, one channel per connection), preparing rootfs, bundle and FIFO stdio
on task Create/Exec for engines that do not announce them (stock containerd). The sandboxer attaches
and detaches pods through the control service on ``<dir>/task.sock``.
"""
