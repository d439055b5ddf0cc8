"""bench_coldboot: the console parsing, the variant syntax, and one real cold boot per variant through main()."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import bench_coldboot

CONSOLE = """[    1.402113] Run /init as init process
2026-12-05 14:58:01 INFO kuasar_vmm_task: vmm-task 0.1.0 starting (pid 1, share 9p, uptime 2.31 s)
2026-12-05 14:58:01 INFO kuasar_vmm_task: 26 kernel modules loaded (uptime 2.60 s)
2026-12-05 14:58:01 INFO kuasar_vmm_task: serving ttrpc over the mux on /dev/vport1p1 (uptime 2.67 s)
"""


def test_guest_marks_are_the_agents_uptimes() -> None:
    assert bench_coldboot.guest_marks(CONSOLE) == {"starting": 2.31, "modules_loaded": 2.60, "serving": 2.67}
    assert bench_coldboot.guest_marks("[    1.4] Run /init as init process\n") == {}


def test_variants_need_a_name_and_an_equals_sign(capsys) -> None:
    with pytest.raises(SystemExit):
        bench_coldboot.main(["--variant", "no-equals-sign"])
    assert "expected NAME=KERNEL_PARAMS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_coldboot.main(["--variant", "a=", "--variant", "a=quiet"])
    assert "variant names must differ" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_coldboot.main(["--variant", "a=", "--image", "b=/tmp"])
    assert "--image b: no variant of that name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_coldboot.main(["--variant", "a=", "--image", "a=/nonexistent-kuasar-image"])
    assert "holds no vmlinux.bin" in capsys.readouterr().err


@pytest.mark.e2e
def test_one_boot_per_variant_is_measured(tmp_path) -> None:
    if os.geteuid() != 0 or not shutil.which("qemu-system-x86_64"):
        pytest.skip("needs root and qemu-system-x86_64")
    out = tmp_path / "coldboot.json"
    assert bench_coldboot.main(["--boots", "1", "--variant", "shipped=", "--variant", "nokprobe=initcall_blacklist="
                                "init_kprobe_trace", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"shipped", "nokprobe"}
    for variant in result["variants"].values():
        boot = variant["boots"][0]
        assert variant["n"] == 1 and 0 < boot["boot_s"] < 120
        # the guest's clock starts after QEMU's spawn, and the agent serves after it starts
        assert 0 < boot["starting"] <= boot["serving"] < boot["boot_s"]
