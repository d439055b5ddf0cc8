"""rpm/units and rpm/sysconfig: what systemd-analyze says about every unit, and the settings the
restart promise and upstream compatibility depend on."""
from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest

from rpmroot import REPO, Root, run

UNITS = sorted((REPO / "rpm" / "units").glob("kuasar-*.service"))
TYPES = [u.stem.split("-", 1)[1] for u in UNITS]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str
    parser.read(path)
    return parser


def options(sandbox_type: str) -> list:
    text = (REPO / "rpm" / "sysconfig" / ("kuasar-" + sandbox_type)).read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("OPTIONS=")]
    assert len(lines) == 1
    return shlex.split(shlex.split(lines[0].split("=", 1)[1])[0])


def test_every_type_has_a_unit() -> None:
    assert TYPES == ["quark", "runc", "vmm", "wasm"]


@pytest.mark.parametrize("sandbox_type", TYPES)
def test_unit_settings(sandbox_type: str) -> None:
    service = unit(REPO / "rpm" / "units" / ("kuasar-%s.service" % sandbox_type))["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillMode"] == "process", "pods must survive a restart"
    assert service["Delegate"] == "yes"
    assert service["WatchdogSec"] == "30s"
    assert int(service["LimitNOFILE"]) >= 1048576
    assert service["EnvironmentFile"] == "-/etc/sysconfig/kuasar-" + sandbox_type
    assert service["ExecStart"] == "/usr/bin/%s-sandboxer $OPTIONS" % sandbox_type
    assert unit(REPO / "rpm" / "units" / ("kuasar-%s.service" % sandbox_type))["Install"]["WantedBy"] == \
        "multi-user.target"


@pytest.mark.parametrize("sandbox_type", TYPES)
def test_sysconfig_is_upstream_compatible(sandbox_type: str) -> None:
    assert options(sandbox_type) == ["--listen", "/run/%s-sandboxer.sock" % sandbox_type,
                                     "--dir", "/run/kuasar-" + sandbox_type]


def test_systemd_analyze_verify(full_root: Root, tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at the installed copy in the throwaway root
    failures = []
    for path in UNITS:
        sandbox_type = path.stem.split("-", 1)[1]
        installed = full_root.path / "usr" / "lib" / "systemd" / "system" / path.name
        if not installed.exists():
            failures.append("%s: not installed by any package" % path.name)
            continue
        assert installed.read_text() == path.read_text()
        binary = full_root.path / "usr" / "bin" / ("%s-sandboxer" % sandbox_type)
        copy = tmp_path / path.name
        copy.write_text(path.read_text().replace("ExecStart=/usr/bin/", "ExecStart=%s/" % binary.parent))
        proc = run("systemd-analyze", "verify", "--man=no", str(copy), check=False)
        if proc.returncode != 0 or proc.stderr.strip():
            failures.append("%s: rc=%d %s" % (path.name, proc.returncode, proc.stderr))
    assert not failures, "\n".join(failures)


def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / "kuasar-runc.service"
    broken.write_text((REPO / "rpm/units/kuasar-runc.service").read_text().replace("Type=notify", "Type=notfy"))
    proc = run("systemd-analyze", "verify", "--man=no", str(broken), check=False)
    assert proc.returncode != 0
