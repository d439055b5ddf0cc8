"""vmm-task: the guest agent of the vmm sandbox type, PID 1 inside every pod's microVM.

It mounts the guest's file systems and the pod share, reaps every orphan, and serves one ttrpc
server (Task v2/v3, Streaming, Kuasar's grpc.SandboxService) to the host over the virtio-serial mux
(and over vsock when the VM has one). Runtime dependencies: python3 stdlib, protobuf and the
protobuf-only parts of kuasar_shared.
"""

__version__ = "0.1.0"
