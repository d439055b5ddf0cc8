"""Process stdio plumbing shared by every task server: FIFOs and containerd's Streaming service."""
from kuasar_shared.io.stdio import ProcessIO, open_process_io
from kuasar_shared.io.streaming import StreamingHub, stream_id_of

__all__ = ["ProcessIO", "open_process_io", "StreamingHub", "stream_id_of"]
