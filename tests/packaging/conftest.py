"""Fixtures of the packaging tests: the RPMs built once per session, the stand-in distribution
package and throwaway roots (see rpmroot.py). The test modules import rpmroot as a top-level module."""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rpmroot import BASE_PROVIDES, FAKE_SYSTEMCTL, Built, Root, build, c_library_provides, run  # noqa: E402


@pytest.fixture(scope="session")
def tools() -> None:
    for tool in ("rpm", "rpmbuild", "systemd-analyze"):
        if shutil.which(tool) is None:
            pytest.fail("%s is not installed (apt-get install rpm systemd)" % tool)


@pytest.fixture(scope="session")
def rpms(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Every package of this tree, version N (release 1)."""
    return build(tmp_path_factory.mktemp("rpm-n"))


@pytest.fixture(scope="session")
def base_rpm(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``kuasar-test-base``: the stand-in distribution (see the module docstring)."""
    top = tmp_path_factory.mktemp("rpm-base")
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is not installed (apt-get install busybox-static)")
    spec = top / "base.spec"
    spec.write_text(textwrap.dedent("""\
        Name: kuasar-test-base
        Version: 1
        Release: 1
        Summary: stand-in distribution for the kuasar packaging tests
        License: Apache-2.0
        BuildArch: noarch
        AutoReqProv: no
        Provides: %(provides)s
        %%description
        Test only.
        %%install
        install -D -m 0755 %(busybox)s %%{buildroot}/bin/busybox
        ln -s busybox %%{buildroot}/bin/sh
        install -d %%{buildroot}/usr/bin %%{buildroot}/var/log
        printf '%(systemctl)s' > %%{buildroot}/usr/bin/systemctl
        chmod 0755 %%{buildroot}/usr/bin/systemctl
        %%files
        /bin/busybox
        /bin/sh
        /usr/bin/systemctl
        %%dir /var/log
        """) % {"provides": ", ".join(BASE_PROVIDES + tuple(c_library_provides())), "busybox": busybox,
                "systemctl": FAKE_SYSTEMCTL.replace("\n", "\\n")})
    run("rpmbuild", "-bb", "--define", "_topdir %s" % top, "--define", "_binaries_in_noarch_packages_terminate_build 0",
        "--define", "__strip /bin/true", str(spec))
    return next((top / "RPMS" / "noarch").glob("kuasar-test-base-*.rpm"))


@pytest.fixture
def new_root(tmp_path: Path, base_rpm: Path):
    """Factory of fresh roots (one test may need several)."""
    count = [0]

    def make() -> Root:
        count[0] += 1
        return Root(tmp_path / ("root%d" % count[0]), base_rpm)
    return make


@pytest.fixture(scope="session")
def full_root(rpms: Built, base_rpm: Path, tmp_path_factory: pytest.TempPathFactory) -> Root:
    """A root with every built package installed (dependencies checked)."""
    root = Root(tmp_path_factory.mktemp("rpm-full") / "root", base_rpm)
    root.install(*rpms.paths(*rpms.packages))
    return root
