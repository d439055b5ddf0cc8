"""elf: DT_NEEDED read without binutils."""
import sys

from kuasar_vmm_task.image.elf import is_elf, needed


def test_needed_of_real_binaries(tmp_path):
    assert "libc.so.6" in needed("/usr/bin/python3.11")
    assert needed("/bin/busybox") == []  # busybox-static
    script = tmp_path / "s"
    script.write_text("#!/bin/sh\n")
    assert not is_elf(str(script)) and needed(str(script)) == []
    assert is_elf(sys.executable)
