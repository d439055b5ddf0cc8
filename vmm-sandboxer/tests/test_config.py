import logging

import pytest

from kuasar_shared.config import ConfigError
from kuasar_vmm_sandboxer import config


def test_shipped_file_loads():
    cfg = config.load(__file__.rsplit("/tests/", 1)[0] + "/config_qemu.toml")
    assert cfg.hypervisor.accel == "auto" and cfg.hypervisor.machine_type == "q35"
    assert cfg.hypervisor.share_fs == config.SHARE_9P
    assert cfg.hypervisor.cpu == "qemu64,+rdrand"
    assert (cfg.hypervisor.tcg_tb_size_mb, cfg.hypervisor.memory_overhead_in_mb) == (128, 256)


def test_upstream_names_and_aliases():
    cfg = config.parse('[hypervisor]\nshare_fs = "VirtioFS"\nvcpus = 2\nmemory_in_mb = 512\naccel = "kvm"\n')
    assert cfg.hypervisor.share_fs == config.SHARE_VIRTIOFS
    assert cfg.hypervisor.cpu == "host"


def test_unknown_key_warns(caplog):
    with caplog.at_level(logging.WARNING):
        config.parse("[hypervisor]\nblock_device_driver = 'VirtioBlk'\n", "x.toml")
    assert "[hypervisor].block_device_driver" in caplog.text


def test_microvm_under_tcg_is_accepted(caplog):
    """microvm boots under TCG (the sandboxer passes the host TSC rate, see hypervisors.qemu.tsc)."""
    with caplog.at_level(logging.WARNING):
        hv = config.parse("[hypervisor]\nmachine_type = 'microvm'\naccel = 'tcg'\n", "x.toml").hypervisor
    assert (hv.machine_type, hv.accel) == ("microvm", "tcg") and "microvm" not in caplog.text


@pytest.mark.parametrize("text, key", [
    ("[hypervisor]\nvcpus = 'two'", "[hypervisor].vcpus"),
    ("[hypervisor]\nmachine_type = 'virt'", "[hypervisor].machine_type"),
    ("[hypervisor]\naccel = 'hvf'", "[hypervisor].accel"),
    ("[hypervisor]\nshare_fs = 'nfs'", "[hypervisor].share_fs"),
    ("[hypervisor]\nmemory_in_mb = 16", "[hypervisor].memory_in_mb"),
    ("[hypervisor]\ninitrd_path = ''", "[hypervisor]"),
    ("[hypervisor]\ntype = 'firecracker'", "[hypervisor].type"),
    ("[hypervisor]\ntype = 3", "[hypervisor].type"),
    ("[hypervisor]\ntcg_tb_size_mb = 0", "[hypervisor].tcg_tb_size_mb"),
    ("[hypervisor]\naccel = 'tcg'\ntcg_tb_size_mb = 1024", "[hypervisor].tcg_tb_size_mb"),
])
def test_bad_values_name_file_and_key(text, key):
    with pytest.raises(ConfigError) as err:
        config.parse(text, "/etc/x.toml")
    assert err.value.path == "/etc/x.toml" and err.value.key == key


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        config.load("/nonexistent/config_qemu.toml")


def test_the_type_picks_the_backend_config():
    """``[hypervisor] type`` chooses the backend; upstream's QEMU files (no type) stay QEMU."""
    assert type(config.parse("").hypervisor).__name__ == "QemuConfig"
    assert config.parse("[hypervisor]\ntype = 'qemu'\n").hypervisor.type == "qemu"


@pytest.mark.parametrize("name, shipped", [("qemu", "config_qemu.toml"), ("stratovirt", "config_stratovirt.toml"),
                                           ("cloud-hypervisor", "config_clh.toml")])
def test_every_backend_ships_a_config_of_its_type(name, shipped, caplog):
    from kuasar_vmm_sandboxer import hypervisors

    with caplog.at_level(logging.WARNING):
        cfg = config.load(__file__.rsplit("/tests/", 1)[0] + "/" + shipped)
    assert cfg.hypervisor.type == name and type(cfg.hypervisor) is hypervisors.backends()[name].config
    assert caplog.text == "", "the shipped file has keys its backend does not know"


def test_backends_are_the_packages_under_hypervisors():
    from kuasar_vmm_sandboxer import hypervisors

    assert sorted(hypervisors.backends()) == ["cloud-hypervisor", "qemu", "stratovirt"]


def test_a_key_of_another_backend_warns(caplog):
    """``qemu_path`` in a StratoVirt file is a mistake worth a warning (it is ignored)."""
    with caplog.at_level(logging.WARNING):
        config.parse("[hypervisor]\ntype = 'stratovirt'\nqemu_path = '/usr/bin/qemu'\n", "x.toml")
    assert "[hypervisor].qemu_path" in caplog.text
