"""The task front: owns the engine's task socket so a task server crash or upgrade is invisible to the engine.

One front per sandbox type listens on the task address the engine holds (``<dir>/task.sock``). For
every engine connection it opens one connection to the task server (the backend, on a private
socket) and copies ttrpc frames both ways, stream ids unchanged. When the backend goes away the
engine connection stays open and the front keeps every Task API call in flight; once a backend
answers on the private socket again (restarted by the sandboxer, or replaced by a live upgrade) the
front sends them again on a new connection:

- reads (State, Pids, Stats, Connect) and ``Wait`` are idempotent and are simply sent again, so a
  Wait held by the engine never fails with ``ttrpc: closed``; the new backend answers it with the
  real exit status (it re-adopts containers and claims exits recorded while it was down);
- calls that change something (Create, Start, Exec, Kill, Delete, ...) carry a request id in ttrpc
  metadata (``kuasar-request-id``) that the backend journals (``kuasar_shared.task.journal``): a
  replayed call it finished is answered from the journal, one it never saw runs normally, and one
  it was running when it died is settled against the container's actual state, so nothing runs twice;
- Streaming (stdio) streams cannot be replayed (their data is consumed) and fail with UNAVAILABLE.

The front is deliberately tiny and never needs upgrading: it runs as ``python -I -S taskfront.py``
and imports only the interpreter's C modules (no asyncio, protobuf or gRPC: ~4 MB PSS). It bounds
the number of engine connections, the bytes it reads ahead per connection and the bytes of
requests it holds unanswered over all connections (the task server then holds no more). With no engine
connection open it exits once its socket path is gone or no task server answered for a minute.

Command line: ``--listen PATH --backend PATH [--max-connections N] [--buffer-limit BYTES]
[--inflight-limit BYTES]``.
"""
from __future__ import annotations

import os
import select
import struct
import sys
import time
import _socket

HEADER = struct.Struct(">IIBB")
MAX_MESSAGE = 4 << 20
#: engine connections served at once: containerd 2.x opens one per pod (its shim client per sandbox),
#: and a node runs up to the kubelet's --max-pods (110 by default, often raised to 250-500)
MAX_CONNECTIONS = 1024
TYPE_REQUEST = 0x1
TYPE_RESPONSE = 0x2
#: gRPC status codes the front answers with itself
UNAVAILABLE = 14
RESOURCE_EXHAUSTED = 8
TASK_SERVICES = (b"containerd.task.v3.Task", b"containerd.task.v2.Task")
#: Task API calls with effects: tagged with a request id the backend journals
MUTATING = frozenset((b"Create", b"Start", b"Delete", b"Exec", b"Kill", b"Pause", b"Resume", b"Checkpoint",
                      b"ResizePty", b"CloseIO", b"Update", b"Shutdown"))
REQUEST_ID_KEY = b"kuasar-request-id"
#: seconds between attempts to reach a backend that is down
RETRY_INTERVAL = 0.05
#: seconds between checks that the front is still wanted (see Front.still_wanted)
CHECK_INTERVAL = 5.0
#: an idle front whose backend has not answered for this long exits
ORPHAN_EXIT = 60.0
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


def log(message: str) -> None:
    """One line on stderr (the sandboxer points it at its log)."""
    os.write(2, f"{time.strftime('%Y-%m-%d %H:%M:%S')} task-front[{os.getpid()}]: {message}\n".encode())


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _put_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _put_varint(number << 3 | 2) + _put_varint(len(value)) + value


def envelope(data: bytes) -> tuple[bytes, bytes]:
    """(service, method) of a serialized ttrpc Request; empty when it does not parse."""
    service = method = b""
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            wire = key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 2:
                length, pos = _varint(data, pos)
                if key >> 3 == 1:
                    service = data[pos:pos + length]
                elif key >> 3 == 2:
                    method = data[pos:pos + length]
                pos += length
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            else:
                return b"", b""
    except IndexError:
        return b"", b""
    return service, method


def tag(data: bytes, request_id: bytes) -> bytes:
    """The Request ``data`` with metadata ``kuasar-request-id: request_id`` appended (repeated field 5)."""
    return data + _field(5, _field(1, REQUEST_ID_KEY) + _field(2, request_id))


def response(stream_id: int, code: int, message: str) -> bytes:
    """A ttrpc Response frame carrying only a status."""
    status = _put_varint(1 << 3) + _put_varint(code) + _field(2, message.encode())
    body = _field(1, status)
    return HEADER.pack(len(body), stream_id, TYPE_RESPONSE, 0) + body


class Link:
    """One engine connection and its current backend connection.

    ``pending`` holds every request sent on and not yet answered, as (frame, replayable, charge);
    what the front reads ahead is bounded by ``limit`` (``ein`` + ``bout``, and separately the
    pending copies). A frame's bytes are charged to the front's budget (:meth:`Front.reserve`) before
    its body is read, and released when it is answered (data frames: when passed on).
    """

    def __init__(self, front: Front, esock: _socket.socket, number: int) -> None:
        self.front = front
        self.esock = esock
        self.bsock: _socket.socket | None = None
        self.ein = bytearray()
        self.eout = bytearray()
        self.bin = bytearray()
        self.bout = bytearray()
        self.pending: dict[int, tuple[bytes, bool, int]] = {}
        self.pending_bytes = 0
        #: budget reserved for the frame being read
        self.reserved = 0
        self.skip = 0
        self.skip_stream = 0
        self.prefix = front.instance + b"-" + str(number).encode() + b"-"
        self.masks: dict[int, int] = {}

    # -- engine side ---------------------------------------------------------------------------
    def engine_frames(self) -> None:
        """Consume complete frames from ``ein``; oversized ones are skipped and refused like ttrpc does."""
        buf = self.ein
        while True:
            if self.skip:
                gone = min(self.skip, len(buf))
                del buf[:gone]
                self.skip -= gone
                if self.skip:
                    return
                self.eout += response(self.skip_stream, RESOURCE_EXHAUSTED,
                                      f"message length exceeds maximum message size of {MAX_MESSAGE}")
            if len(buf) < HEADER.size:
                return
            length, sid, type_, _flags = HEADER.unpack_from(buf)
            if length > MAX_MESSAGE:
                del buf[:HEADER.size]
                self.skip, self.skip_stream = length, sid
                continue
            end = HEADER.size + length
            if not self.reserved:
                if not self.front.reserve(end):
                    self.front.blocked.add(self)
                    return
                self.reserved = end
            if len(buf) < end:
                return
            frame = bytes(buf[:end])
            del buf[:end]
            charge, self.reserved = self.reserved, 0
            if type_ == TYPE_REQUEST:
                frame = self.request(sid, frame, charge)
            else:
                self.front.release(charge)
            if self.bsock is not None:
                self.bout += frame

    def request(self, sid: int, frame: bytes, charge: int) -> bytes:
        """Remember a request for replay; tag calls with effects with a request id."""
        service, method = envelope(frame[HEADER.size:])
        replayable = service in TASK_SERVICES
        if replayable and method in MUTATING:
            body = tag(frame[HEADER.size:], self.prefix + str(sid).encode())
            _, _, type_, flags = HEADER.unpack_from(frame)
            frame = HEADER.pack(len(body), sid, type_, flags) + body
        self._forget(sid)
        self.pending[sid] = (frame, replayable, charge)
        self.pending_bytes += charge
        return frame

    def _forget(self, sid: int) -> None:
        done = self.pending.pop(sid, None)
        if done is not None:
            self.pending_bytes -= done[2]
            self.front.release(done[2])

    def release_all(self) -> None:
        """Give back every charge (the engine connection is closed)."""
        for sid in list(self.pending):
            self._forget(sid)
        self.front.release(self.reserved)
        self.reserved = 0

    # -- backend side --------------------------------------------------------------------------
    def backend_frames(self) -> None:
        buf = self.bin
        while len(buf) >= HEADER.size:
            length, sid, type_, _flags = HEADER.unpack_from(buf)
            end = HEADER.size + length
            if len(buf) < end:
                return
            if type_ == TYPE_RESPONSE:
                self._forget(sid)
            self.eout += buf[:end]
            del buf[:end]

    def backend_lost(self) -> None:
        """Keep what can be replayed; fail streams that cannot."""
        sock, self.bsock = self.bsock, None
        if sock is not None:
            self.front.forget(sock)
        self.bin.clear()
        self.bout.clear()
        for sid, (_frame, replayable, _charge) in list(self.pending.items()):
            if not replayable:
                self._forget(sid)
                self.eout += response(sid, UNAVAILABLE, "task server restarted: stream lost, open it again")

    def attach(self, sock: _socket.socket) -> None:
        """Use a new backend connection: send every pending call again, oldest first."""
        self.bsock = sock
        self.bin.clear()
        self.bout = bytearray(b"".join(pending[0] for _, pending in sorted(self.pending.items())))

    def interest(self) -> tuple[int, int]:
        """epoll masks for (engine, backend): stop reading a side whose output is over the limit."""
        limit = self.front.buffer_limit
        emask = _OUT if self.eout else 0
        if len(self.ein) + len(self.bout) < limit and self.pending_bytes < limit and self not in self.front.blocked:
            emask |= _IN
        bmask = _OUT if self.bout else 0
        if len(self.eout) + len(self.bin) < limit:
            bmask |= _IN
        return emask, bmask


class Front:
    """The accept loop and the epoll loop over every link.

    Resource handling: each link owns its two sockets; a link is closed when the engine closes its
    side; the backend side is replaced, never closed for the engine.
    """

    def __init__(self, listen: str, backend: str, max_connections: int = MAX_CONNECTIONS,
                 buffer_limit: int = MAX_MESSAGE + HEADER.size + (64 << 10), inflight_limit: int = 8 << 20) -> None:
        self.backend = backend
        self.max_connections = max_connections
        self.buffer_limit = buffer_limit
        #: bytes of requests read and not yet answered, over every link: bounds what the front and the
        #: task server hold at once (16 engine connections sending 4 MiB each cost the server 70 MB)
        self.inflight_limit = inflight_limit
        self.inflight = 0
        #: links waiting for budget to read the frame whose header they have
        self.blocked: set[Link] = set()
        self.released = False
        self.instance = os.urandom(6).hex().encode()
        self.epoll = select.epoll()
        self.fds: dict[int, tuple[Link, bool]] = {}
        self.links: set[Link] = set()
        self.waiting: set[Link] = set()
        self.count = 0
        self.down_since: float | None = None
        self.listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            os.unlink(listen)
        except FileNotFoundError:
            pass
        self.listener.bind(listen)
        os.chmod(listen, 0o600)
        self.listen = listen
        self.inode = os.stat(listen).st_ino
        self.last_check = self.answered_at = time.monotonic()
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.epoll.register(self.listener.fileno(), _IN)

    def reserve(self, size: int) -> bool:
        """Charge ``size`` bytes to the budget; one frame always fits when nothing is charged."""
        if self.inflight and self.inflight + size > self.inflight_limit:
            return False
        self.inflight += size
        return True

    def release(self, size: int) -> None:
        self.inflight -= size
        if size and self.blocked:
            self.released = True

    def _unblock(self) -> None:
        """Let links waiting for budget read on, while it lasts."""
        self.released = False
        for link in list(self.blocked):
            self.blocked.discard(link)
            link.engine_frames()
            self._update(link)

    def forget(self, sock: _socket.socket) -> None:
        fd = sock.fileno()
        if fd in self.fds:
            link, _ = self.fds.pop(fd)
            # a backend connection that failed its first send was never registered (that happens in _update)
            if link.masks.pop(fd, None) is not None:
                self.epoll.unregister(fd)
        sock.close()

    def _connect(self, link: Link) -> bool:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.backend)
        except OSError:
            sock.close()
            return False
        link.attach(sock)
        self.fds[sock.fileno()] = (link, True)
        return True

    def _accept(self) -> None:
        while True:
            try:
                sock = self._accept_one()
            except BlockingIOError:
                return
            except OSError as err:  # EMFILE and friends: keep serving the links we have
                log(f"accept failed: {err}")
                return
            if len(self.links) >= self.max_connections:
                log(f"refusing a task connection: {self.max_connections} are open (--max-connections)")
                sock.close()
                continue
            sock.setblocking(False)
            self.count += 1
            link = Link(self, sock, self.count)
            self.links.add(link)
            self.fds[sock.fileno()] = (link, False)
            if not self._connect(link):
                self.waiting.add(link)
            self._update(link)

    def _accept_one(self) -> _socket.socket:
        fd, _ = self.listener._accept()  # type: ignore[attr-defined]  # the C socket's accept: no socket.py
        return _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)

    def _close(self, link: Link) -> None:
        self.links.discard(link)
        self.waiting.discard(link)
        self.blocked.discard(link)
        link.release_all()
        if link.bsock is not None:
            self.forget(link.bsock)
            link.bsock = None
        self.forget(link.esock)

    def _update(self, link: Link) -> None:
        """Write what can be written now, then set the epoll masks that changed."""
        try:
            if link.eout:
                del link.eout[:link.esock.send(link.eout)]
        except BlockingIOError:
            pass
        except OSError:
            self._close(link)
            return
        if link.bsock is not None and link.bout:
            try:
                del link.bout[:link.bsock.send(link.bout)]
            except BlockingIOError:
                pass
            except OSError:
                self._lost(link)
        emask, bmask = link.interest()
        for sock, mask in ((link.esock, emask), (link.bsock, bmask)):
            if sock is None:
                continue
            fd = sock.fileno()
            old = link.masks.get(fd)
            if old is None:
                self.epoll.register(fd, mask)
            elif old != mask:
                self.epoll.modify(fd, mask)
            link.masks[fd] = mask

    def _lost(self, link: Link) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log("task server connection lost; holding calls in flight until it is back")
        link.backend_lost()
        self.waiting.add(link)

    def _event(self, fd: int, events: int) -> None:
        link, backend = self.fds[fd]
        sock = link.bsock if backend else link.esock
        if sock is None:
            return
        if events & (_IN | select.EPOLLHUP | select.EPOLLERR):
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                if backend:
                    self._lost(link)
                else:
                    self._close(link)
                    return
            elif data:
                if backend:
                    link.bin += data
                    link.backend_frames()
                else:
                    link.ein += data
                    link.engine_frames()
        self._update(link)

    def _reconnect(self) -> None:
        for link in list(self.waiting):
            if not self._connect(link):
                return
            self.waiting.discard(link)
            self._update(link)
        if self.down_since is not None:
            log(f"task server is back after {time.monotonic() - self.down_since:.2f} s; calls in flight sent again")
            self.down_since = None

    def still_wanted(self) -> bool:
        """False once no engine connection is open and either our socket path is gone (the sandboxer's
        directory was removed) or no task server answered for :data:`ORPHAN_EXIT` seconds (the
        sandboxer and its task server were stopped for good); a later sandboxer starts a new front."""
        now = time.monotonic()
        if self.links or now - self.last_check < CHECK_INTERVAL:
            return True
        self.last_check = now
        try:
            if os.stat(self.listen).st_ino != self.inode:
                return False
        except FileNotFoundError:
            return False
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(self.backend)
            self.answered_at = now
        except OSError:
            pass
        finally:
            probe.close()
        return now - self.answered_at < ORPHAN_EXIT

    def run(self) -> None:
        """Serve until killed, or until no longer wanted."""
        listener = self.listener.fileno()
        while self.still_wanted():
            timeout = RETRY_INTERVAL if self.waiting else CHECK_INTERVAL
            for fd, events in self.epoll.poll(timeout):
                if fd == listener:
                    self._accept()
                elif fd in self.fds:
                    self._event(fd, events)
            if self.waiting:
                self._reconnect()
            if self.released:
                self._unblock()
        log(f"no engine connection, and {self.listen} is gone or no task server answered for {ORPHAN_EXIT:.0f} s: "
            f"exiting")


def parse(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs (argparse would cost the front a megabyte)."""
    known = {"--listen", "--backend", "--max-connections", "--buffer-limit", "--inflight-limit"}
    if len(argv) % 2 or any(a not in known for a in argv[::2]):
        raise SystemExit(f"usage: taskfront.py --listen PATH --backend PATH [--max-connections N] "
                         f"[--buffer-limit BYTES] [--inflight-limit BYTES], got {argv}")
    opts = dict(zip(argv[::2], argv[1::2]))
    if "--listen" not in opts or "--backend" not in opts:
        raise SystemExit("taskfront.py: --listen and --backend are required")
    return opts


def main(argv: list[str]) -> None:
    opts = parse(argv)
    kwargs = {}
    if "--max-connections" in opts:
        kwargs["max_connections"] = int(opts["--max-connections"])
    if "--buffer-limit" in opts:
        kwargs["buffer_limit"] = max(int(opts["--buffer-limit"]), MAX_MESSAGE + HEADER.size)
    if "--inflight-limit" in opts:
        kwargs["inflight_limit"] = int(opts["--inflight-limit"])
    front = Front(opts["--listen"], opts["--backend"], **kwargs)
    log(f"serving {opts['--listen']} for the task server at {opts['--backend']}")
    front.run()


if __name__ == "__main__":
    main(sys.argv[1:])
