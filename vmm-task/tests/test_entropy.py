"""entropy.reseed against this host's kernel (root): host bytes are added and the CRNG reseeded."""
import os

import pytest

from kuasar_vmm_task import entropy


@pytest.mark.skipif(os.geteuid() != 0, reason="RNDADDENTROPY and RNDRESEEDCRNG need root")
def test_reseed_adds_the_host_rng_bytes(tmp_path):
    hwrng = tmp_path / "hwrng"
    hwrng.write_bytes(os.urandom(100))
    assert entropy.reseed(str(hwrng)) == 64
    assert entropy.reseed(str(tmp_path / "missing")) == 0  # no host RNG: the reseed still happens


def test_reseed_names_a_missing_random_device(tmp_path):
    with pytest.raises(FileNotFoundError):
        entropy.reseed(str(tmp_path / "missing"), str(tmp_path / "no-urandom"))
