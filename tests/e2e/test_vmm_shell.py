"""End to end: ``kuasar-ctl vm-shell`` on a real terminal, into the guest of a vmm pod started with debug.

A real vmm-sandboxer + relay + QEMU (TCG) guest. The pod's annotation ``io.kuasar.vmm.debug=true`` boots
the guest with ``task.debug``, whose agent then serves the debug console. kuasar-ctl runs on a pseudo-
terminal of the test (the user's side): what is typed there runs in the guest's shell, outside every
container, and the shell's exit status is kuasar-ctl's. A pod without the annotation gets a clear error.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import termios
import time
import uuid

import pytest
from support import Ctl

DEBUG = {"io.kuasar.vmm.debug": "true"}


@pytest.fixture(scope="module")
def pods(vmm, images, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vmmshell")
    ctl = Ctl("vmm", vmm.listen, str(tmp / "ctl"), images)
    made = {}
    for name, notes in (("debug", DEBUG), ("plain", {})):
        cfg = tmp / f"{name}.json"
        cfg.write_text(json.dumps({"metadata": {"name": f"{name}-{uuid.uuid4().hex[:6]}", "namespace": "e2e",
                                                "uid": uuid.uuid4().hex}, "annotations": notes}))
        made[name] = ctl("runp", str(cfg), timeout=120).stdout.decode().strip()
    yield ctl, made
    for pod_id in made.values():
        ctl("rmp", pod_id, check=False)


class Terminal:
    """kuasar-ctl on the slave side of a pty; the test types into and reads from the master side."""

    def __init__(self, argv: list[str], rows: int = 33, cols: int = 97) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.seen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def read_until(self, marker: bytes, timeout: float = 30.0) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, "terminal shows %r" % self.seen[-2000:]
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # EIO: kuasar-ctl exited and closed the terminal
                    assert marker in self.seen, "terminal shows %r" % self.seen[-2000:]
        return self.seen

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            os.close(self.master)


def test_vm_shell_is_an_interactive_shell_in_the_guest(vmm, pods):
    ctl, made = pods
    status = json.loads(ctl.out("inspectp", made["debug"]))
    assert status["info"]["sandboxerInfo"]["debug"] == "true"
    term = Terminal(ctl.base + ["vm-shell", made["debug"][:12]])
    try:
        term.type("echo $((6*7))\r")
        out = term.read_until(b"42\r\n")
        assert b"echo $((6*7))" in out  # echoed by the guest's terminal, not ours (raw mode)
        term.type("stty size; [ -f /run/kuasar/state/hostname ] && echo share$((2+3))\r")
        out = term.read_until(b"share5\r\n")  # the pod share is mounted where the guest agent put it
        assert b"33 97\r\n" in out  # our window size reached the guest's terminal
        term.type("exit 3\r")
        assert term.wait() == 3
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.wait()


def test_vm_shell_of_a_pod_without_debug_is_refused(pods):
    ctl, made = pods
    result = ctl("vm-shell", made["plain"], check=False)
    assert result.returncode == 1
    assert (f"pod {made['plain'][:13]} was not started with debug; set annotation io.kuasar.vmm.debug=true"
            in result.stderr.decode())
