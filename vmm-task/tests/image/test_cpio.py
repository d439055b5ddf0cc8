"""cpio: newc archives the kernel can unpack (checked by parsing them back)."""
import io
import os
import stat

from kuasar_vmm_task.image.cpio import write_tree


def _parse(data):
    entries, pos = {}, 0
    while True:
        head = data[pos:pos + 110]
        assert head[:6] == b"070701"
        fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body, (fields[9], fields[10]))


def test_tree_with_prefix_links_and_devices(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"hello")
    os.chmod(tmp_path / "a" / "b" / "f", 0o755)
    os.symlink("/bin/busybox", tmp_path / "a" / "sh")
    os.symlink("b", tmp_path / "a" / "dirlink")
    out = io.BytesIO()
    write_tree(out, [(str(tmp_path / "a"), ""), (str(tmp_path / "a" / "b"), "rootfs")],
               char_devices=[("dev/console", 5, 1)])
    entries = _parse(out.getvalue())
    assert entries["b/f"][1] == b"hello" and stat.S_IMODE(entries["b/f"][0]) == 0o755
    assert stat.S_ISLNK(entries["sh"][0]) and entries["sh"][1] == b"/bin/busybox"
    assert stat.S_ISLNK(entries["dirlink"][0])
    assert entries["rootfs/f"][1] == b"hello" and stat.S_ISDIR(entries["rootfs"][0])
    assert stat.S_ISCHR(entries["dev/console"][0]) and entries["dev/console"][2] == (5, 1)
    assert len(out.getvalue()) % 4 == 0
