"""One engine connection carried to the guest: ttrpc frames both ways, task Create/Exec prepared on the way.

Frames are forwarded as they are, except:

- ``Task/Create`` (v2 and v3): the container is prepared on the host share (:func:`bundle.prepare`,
  skipped when ``extensions.tasks`` did it already), FIFO stdio is bridged to guest stream ids, and the
  request is rewritten to the guest bundle ``/run/kuasar/state/<cid>`` with no host rootfs mounts;
- ``Task/Exec``: FIFO stdio is bridged the same way;
- a successful ``Task/Delete`` of a container's init process removes its host-side preparation.

The guest is untrusted: its answers are only framed (4 MiB limit) and passed back; nothing it sends
is used to resolve a host path. A preparation error is answered to the engine directly.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Protocol, Tuple

from google.protobuf.message import DecodeError

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.ttrpc import request_pb2
from kuasar_shared.errors import Code, InvalidArgument, KuasarError, code_of
from kuasar_shared.ids import validate_id
from kuasar_shared.io import stream_id_of
from kuasar_shared.values import Mount
from kuasar_shared.ttrpc import framing

from kuasar_vmm_sandboxer import bundle
from kuasar_vmm_sandboxer.relay.stdio import guest_url

__all__ = ["Forwarder", "Pod", "TASK_SERVICES"]

log = logging.getLogger(__name__)
TASK_SERVICES = ("containerd.task.v3.Task", "containerd.task.v2.Task")


class Pod(Protocol):
    """What a Forwarder needs of its pod (:class:`~kuasar_vmm_sandboxer.relay.link.PodLink` has it)."""

    id: str
    pod_dir: str

    async def channel(self) -> Any:
        """A new (reader, writer) connection to the guest agent."""

    def bridge(self, cid: str, exec_id: str, which: str, path: str) -> str:
        """Start copying between a FIFO and a guest stream; returns the stream id."""

    def forget_container(self, cid: str, remove_bundle: bool) -> None:
        """Stop the container's bridges and, if asked, remove its host-side preparation."""


class Forwarder:
    """Pumps frames between an engine connection and one mux channel until either side closes."""

    def __init__(self, link: Pod, reader: asyncio.StreamReader, writer: Any) -> None:
        self.link = link
        self.reader = reader
        self.writer = writer
        self._lock = asyncio.Lock()
        #: stream id -> (container id, prepared by this Create) / container id, for Create/Delete answers
        self._creates: Dict[int, Tuple[str, bool]] = {}
        self._deletes: Dict[int, str] = {}

    async def run(self) -> None:
        try:
            ch_reader, ch_writer = await self.link.channel()
        except KuasarError as err:
            log.warning("sandbox %s: no guest channel for an engine connection: %s", self.link.id, err)
            self.writer.close()
            return
        up = asyncio.ensure_future(self._engine_to_guest(ch_writer))
        down = asyncio.ensure_future(self._guest_to_engine(ch_reader))
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            ch_writer.close()
            self.writer.close()

    async def _to_engine(self, data: bytes) -> None:
        async with self._lock:
            self.writer.write(data)
            await self.writer.drain()

    async def _answer(self, sid: int, err: KuasarError) -> None:
        resp = request_pb2.Response()
        resp.status.code = code_of(err)
        resp.status.message = err.message
        await self._to_engine(framing.encode(sid, framing.TYPE_RESPONSE, 0, resp.SerializeToString()))

    async def _engine_to_guest(self, ch_writer: Any) -> None:
        try:
            while True:
                try:
                    frame = await framing.read_frame(self.reader)
                except framing.OversizedFrame as err:
                    await self._answer(err.stream_id, err)
                    continue
                data = frame.data
                if frame.type == framing.TYPE_REQUEST:
                    try:
                        data = await self._request(frame.stream_id, data)
                    except KuasarError as err:
                        await self._answer(frame.stream_id, err)
                        continue
                ch_writer.write(framing.encode(frame.stream_id, frame.type, frame.flags, data))
                await ch_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return

    async def _guest_to_engine(self, ch_reader: asyncio.StreamReader) -> None:
        try:
            while True:
                frame = await framing.read_frame(ch_reader)
                if frame.type == framing.TYPE_RESPONSE:
                    self._on_response(frame)
                await self._to_engine(framing.encode(frame.stream_id, frame.type, frame.flags, frame.data))
        except framing.OversizedFrame as err:
            log.warning("sandbox %s: guest sent an oversized frame (%s); dropping the connection", self.link.id, err)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return

    def _on_response(self, frame: framing.Frame) -> None:
        create = self._creates.pop(frame.stream_id, None)
        cid = self._deletes.pop(frame.stream_id, None)
        if create is None and cid is None:
            return
        try:
            ok = request_pb2.Response.FromString(frame.data).status.code == Code.OK
        except DecodeError:
            ok = False
        if create is not None and not ok:
            self.link.forget_container(create[0], remove_bundle=create[1])
        if cid is not None and ok:
            self.link.forget_container(cid, remove_bundle=True)

    async def _request(self, sid: int, data: bytes) -> bytes:
        """The (possibly rewritten) request envelope to forward."""
        try:
            req = request_pb2.Request.FromString(data)
        except DecodeError:
            return data  # the guest answers INVALID_ARGUMENT itself
        if req.service not in TASK_SERVICES or req.method not in ("Create", "Exec", "Delete"):
            return data
        try:
            if req.method == "Create":
                create = shim_pb2.CreateTaskRequest.FromString(req.payload)
                req.payload = (await self._create(sid, create)).SerializeToString()
            elif req.method == "Exec":
                ex = shim_pb2.ExecProcessRequest.FromString(req.payload)
                req.payload = self._exec(ex).SerializeToString()
            else:
                delete = shim_pb2.DeleteRequest.FromString(req.payload)
                if not delete.exec_id:
                    self._deletes[sid] = validate_id(delete.id, "container")
                return data
        except DecodeError as err:
            raise InvalidArgument("malformed %s/%s request: %s" % (req.service, req.method, err)) from err
        return req.SerializeToString()

    async def _create(self, sid: int, req: shim_pb2.CreateTaskRequest) -> shim_pb2.CreateTaskRequest:
        cid = validate_id(req.id, "container")
        pod_dir = self.link.pod_dir
        prepared_here = not bundle.is_prepared(pod_dir, cid)
        if prepared_here:
            spec = bundle.read_spec(req.bundle)
            bundle.prepare(pod_dir, cid, spec, [_mount(m) for m in req.rootfs], req.bundle)
        try:
            for name in ("stdin", "stdout", "stderr"):
                url = getattr(req, name)
                if url and stream_id_of(url) is None:
                    setattr(req, name, guest_url(self.link.bridge(cid, "", name, url)))
        except BaseException:
            self.link.forget_container(cid, remove_bundle=prepared_here)
            raise
        self._creates[sid] = (cid, prepared_here)
        req.bundle = bundle.guest_bundle(cid)
        del req.rootfs[:]
        return req

    def _exec(self, req: shim_pb2.ExecProcessRequest) -> shim_pb2.ExecProcessRequest:
        cid = validate_id(req.id, "container")
        exec_id = validate_id(req.exec_id, "exec") if req.exec_id else ""
        for name in ("stdin", "stdout", "stderr"):
            url = getattr(req, name)
            if url and stream_id_of(url) is None:
                setattr(req, name, guest_url(self.link.bridge(cid, exec_id, name, url)))
        return req


def _mount(m: Any) -> Mount:
    return Mount(m.type, m.source, m.target, tuple(m.options))
