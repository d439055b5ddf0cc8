"""The generated pause program."""
from __future__ import annotations

import platform
import signal
import subprocess
import time

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.pause import pause_elf


def test_elf_headers_per_machine() -> None:
    for machine, e_machine in (("x86_64", 0x3E), ("amd64", 0x3E), ("aarch64", 0xB7), ("arm64", 0xB7)):
        elf = pause_elf(machine)
        assert elf[:4] == b"\x7fELF" and elf[4] == 2 and int.from_bytes(elf[18:20], "little") == e_machine
        entry = int.from_bytes(elf[24:32], "little")
        assert entry == 0x400000 + 64 + 56
    with pytest.raises(InvalidArgument):
        pause_elf("mips")


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="runs the x86_64 program, which cannot exist on this machine (not x86_64)")
def test_pause_program_waits_until_killed(tmp_path) -> None:
    path = tmp_path / "pause"
    path.write_bytes(pause_elf())
    path.chmod(0o755)
    proc = subprocess.Popen([str(path)])
    time.sleep(0.2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == -signal.SIGTERM
