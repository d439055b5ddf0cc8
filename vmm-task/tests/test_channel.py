"""channel: the virtio port found by name; POLLHUP means no host; vsock absent here."""
import errno
import os
import socket

import pytest

from kuasar_vmm_task import channel


def test_find_port_by_name(tmp_path):
    for entry, name in (("vport0p0", "other"), ("vport0p1", "kuasar.agent")):
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "name").write_text(name + "\n")
    (tmp_path / "vport1p1").mkdir()  # no name file
    assert channel.find_port(sys_dir=str(tmp_path)) == "/dev/vport0p1"
    assert channel.find_port("nope", sys_dir=str(tmp_path)) is None
    assert channel.find_port(sys_dir=str(tmp_path / "missing")) is None


def test_find_unnamed_port_one(tmp_path):
    """StratoVirt's virtserialport cannot be named: the agent is the unnamed port 1 (the console is port 0)."""
    (tmp_path / "vport0p0").mkdir()
    (tmp_path / "vport0p1").mkdir()
    assert channel.find_unnamed_port(sys_dir=str(tmp_path)) == "/dev/vport0p1"
    (tmp_path / "vport0p1" / "name").write_text("org.qemu.guest_agent.0\n")
    assert channel.find_unnamed_port(sys_dir=str(tmp_path)) is None  # a named port is someone else's
    assert channel.find_unnamed_port(sys_dir=str(tmp_path / "missing")) is None


def test_host_connected_follows_hangup():
    a, b = socket.socketpair()
    try:
        assert channel.host_connected(a.fileno())
        b.close()
        assert not channel.host_connected(a.fileno())
    finally:
        a.close()
        b.close()


async def test_no_vsock_listener_without_device():
    if os.path.exists("/dev/vsock"):
        server = await channel.listen_vsock(lambda r, w: None, port=4321)
        assert server is not None
        server.close()
    else:
        assert await channel.listen_vsock(lambda r, w: None) is None


async def test_port_busy_with_the_previous_session_is_waited_out(monkeypatch, tmp_path):
    """After a host leaves, the previous session's fd closes a loop iteration later; opening the port
    meanwhile fails with EBUSY, which must not end the agent's server (it held the containers)."""
    real_open, attempts = os.open, []

    def busy_twice(path, flags, *args):
        attempts.append(path)
        if len(attempts) <= 2:
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_open(str(tmp_path / "port"), os.O_RDWR | os.O_CREAT, 0o600)
    monkeypatch.setattr(channel.os, "open", busy_twice)
    fd = await channel._open_exclusive("/dev/vport1p1")
    os.close(fd)
    assert attempts == ["/dev/vport1p1"] * 3

    def missing(path, flags, *args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    monkeypatch.setattr(channel.os, "open", missing)
    with pytest.raises(FileNotFoundError):
        await channel._open_exclusive("/dev/vport9p9")
