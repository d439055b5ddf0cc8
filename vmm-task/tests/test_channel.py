"""channel: the virtio port found by name; POLLHUP means no host; vsock absent here."""
import os
import socket

from kuasar_vmm_task import channel


def test_find_port_by_name(tmp_path):
    for entry, name in (("vport0p0", "other"), ("vport0p1", "kuasar.agent")):
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "name").write_text(name + "\n")
    (tmp_path / "vport1p1").mkdir()  # no name file
    assert channel.find_port(sys_dir=str(tmp_path)) == "/dev/vport0p1"
    assert channel.find_port("nope", sys_dir=str(tmp_path)) is None
    assert channel.find_port(sys_dir=str(tmp_path / "missing")) is None


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
