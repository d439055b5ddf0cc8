"""rpm/kuasar.spec built by rpm/build.sh: which subpackages, what they hold and require, that they
install (alone too) and upgrade as an operator expects, and that the entry points run on the
distribution's Python packages."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rpmroot import REPO, Built, Root, build, expected_subpackages, run, system_python_env

SCRIPTS = {
    "kuasar-common": ["kuasar-task-upgrade"],
    "kuasar-ctl": ["kuasar-ctl"],
    "kuasar-runc": ["runc-sandboxer", "runc-task", "containerd-shim-kuasar-runc-v1"],
    "kuasar-wasm": ["wasm-sandboxer", "wasm-task", "containerd-shim-kuasar-wasm-v1"],
    "kuasar-quark": ["quark-sandboxer", "quark-task", "containerd-shim-kuasar-quark-v1"],
    "kuasar-vmm": ["vmm-sandboxer", "vmm-task-relay", "containerd-shim-kuasar-vmm-v1"],
}
SANDBOXERS = [p for p in SCRIPTS if p not in ("kuasar-common", "kuasar-ctl")]


def files(path: Path) -> list:
    return run("rpm", "-qpl", str(path)).stdout.split()


def requires(path: Path) -> list:
    return [r for r in run("rpm", "-qpR", str(path)).stdout.splitlines() if not r.startswith("rpmlib(")]


def test_subpackages_follow_the_tree(rpms: Built) -> None:
    assert sorted(rpms.packages) == expected_subpackages()
    assert list(rpms.outdir.glob("kuasar-*.src.rpm")), "no source package"


@pytest.fixture(scope="module")
def rpms_next(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Version N+1 (release 2) from a tree that has the runc type only, and a changed default
    /etc/sysconfig/kuasar-runc."""
    tmp = tmp_path_factory.mktemp("rpm-next")
    src = tmp / "src"
    src.mkdir()
    for name in ("shared", "runc-sandboxer", "runc-task", "rpm", "docs", "README.md"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(REPO / name, src / name)
    sysconfig = src / "rpm/sysconfig/kuasar-runc"
    default = sysconfig.read_text()
    sysconfig.write_text(default.replace("--dir /run/kuasar-runc", "--dir /run/kuasar-runc --log-level info"))
    return build(tmp, "--release", "2", src=src)


def test_absent_types_are_not_built(rpms_next: Built) -> None:
    # the same spec builds a tree without the other sandbox types, with kuasar-runc only
    assert sorted(rpms_next.packages) == ["kuasar", "kuasar-common", "kuasar-ctl", "kuasar-runc"]
    meta = [r for r in requires(rpms_next.packages["kuasar"]) if r.startswith("kuasar")]
    assert sorted(meta) == ["kuasar-ctl = 0.1.0-2", "kuasar-runc = 0.1.0-2"]


def test_package_contents(rpms: Built) -> None:
    for pkg, scripts in SCRIPTS.items():
        if pkg not in rpms.packages:
            continue
        listed = files(rpms.packages[pkg])
        for script in scripts:
            assert "/usr/bin/" + script in listed, (pkg, script)
        if pkg in SANDBOXERS:
            t = pkg.split("-")[1]
            assert "/usr/lib/systemd/system/kuasar-%s.service" % t in listed
            assert "/etc/sysconfig/kuasar-%s" % t in listed
            configs = run("rpm", "-qpc", str(rpms.packages[pkg])).stdout.split()
            assert "/etc/sysconfig/kuasar-%s" % t in configs, "sysconfig must be %config"
    common = files(rpms.packages["kuasar-common"])
    assert any(f.endswith("-packages/kuasar_shared/api") for f in common), "generated API missing"
    # the task front is a program built for the machine, its source stays in the source package
    assert any(f.endswith("-packages/kuasar_shared/kuasar-taskfront") for f in common), "task front missing"
    assert not any(f.endswith(".c") for f in common)
    assert run("rpm", "-qp", "--qf", "%{ARCH}", str(rpms.packages["kuasar-common"])).stdout != "noarch"
    ctl = files(rpms.packages["kuasar-ctl"])
    assert any(f.endswith("-packages/kuasar_shared/ctl/cli.py") for f in ctl)
    assert not any("/kuasar_shared/ctl" in f for f in common), "kuasar-ctl's modules belong to kuasar-ctl"
    assert not any("direct_url.json" in f for p in rpms.packages.values() for f in files(p))
    # kuasar-runc carries its compiled helper, not its C source, and is arch-specific for it
    runc = files(rpms.packages["kuasar-runc"])
    assert any(f.endswith("-packages/kuasar_runc_sandboxer/sandbox-parent") for f in runc), runc
    assert not any(f.endswith(".c") or f.endswith("holder_helper.py") for f in runc), runc
    assert run("rpm", "-qp", "--qf", "%{ARCH}", str(rpms.packages["kuasar-runc"])).stdout != "noarch"
    if "kuasar-vmm" in rpms.packages:
        assert "/var/lib/kuasar/config_qemu.toml" in run("rpm", "-qpc", str(rpms.packages["kuasar-vmm"])).stdout.split()
    if "kuasar-vmm-guest" in rpms.packages:
        guest = files(rpms.packages["kuasar-vmm-guest"])
        assert {"/var/lib/kuasar/vmlinux.bin", "/var/lib/kuasar/kuasar.initrd"} <= set(guest)


def test_dependencies(rpms: Built) -> None:
    common = requires(rpms.packages["kuasar-common"])
    for dep in ("python3-h2 >= 4.1", "python3-protobuf >= 3.20"):
        assert dep in common
    assert "python3-pyyaml" not in common, "only kuasar-ctl reads YAML: a sandboxer host needs no PyYAML"
    assert not any("grpcio" in dep for dep in common), "the sandboxers serve gRPC without grpcio"
    assert {"python3-pyyaml", "python3-grpcio >= 1.48", "kuasar-common = 0.1.0-1"} <= set(
        requires(rpms.packages["kuasar-ctl"]))
    assert "python3-daemon" not in " ".join(common), "python-daemon is optional (--daemon only)"
    assert "python3-daemon" in run("rpm", "-qp", "--recommends", str(rpms.packages["kuasar-common"])).stdout
    runc = requires(rpms.packages["kuasar-runc"])
    assert "runc" in runc and "kuasar-common = 0.1.0-1" in runc
    for pkg in SANDBOXERS:
        if pkg in rpms.packages:
            others = [p for p in SANDBOXERS if p != pkg]
            deps = " ".join(requires(rpms.packages[pkg]))
            assert not any(o in deps for o in others), "%s must not need another sandbox type" % pkg
    meta = [r for r in requires(rpms.packages["kuasar"]) if r.startswith("kuasar")]
    assert sorted(meta) == sorted("%s = 0.1.0-1" % p for p in ["kuasar-ctl", *SANDBOXERS] if p in rpms.packages)


def test_install_everything_and_run_entry_points(rpms: Built, full_root: Root) -> None:
    assert set(rpms.packages) <= set(full_root.installed())
    env = system_python_env(full_root)
    failures = []
    for pkg, scripts in SCRIPTS.items():
        if pkg not in rpms.packages:
            continue
        for script in scripts:
            path = full_root.path / "usr" / "bin" / script
            assert path.read_text().startswith("#!/usr/bin/python3\n"), script
            proc = run("/usr/bin/python3", str(path), "-v" if script.startswith("containerd-shim") else "--version",
                       env=env, check=False)
            if proc.returncode != 0 or "0.1.0" not in proc.stdout:
                failures.append("%s: rc=%d %s%s" % (script, proc.returncode, proc.stdout, proc.stderr[-300:]))
    assert not failures, "\n".join(failures)
    # the root's copy ran, not the repository's
    proc = run("/usr/bin/python3", "-c", "import kuasar_shared; print(kuasar_shared.__file__)", env=env)
    assert proc.stdout.startswith(str(full_root.path))


def test_runc_alone(rpms: Built, new_root) -> None:
    root = new_root()
    failed = root.install(*rpms.paths("kuasar-runc"), check=False)
    assert failed.returncode != 0 and "kuasar-common" in failed.stderr
    root.install(*rpms.paths("kuasar-common", "kuasar-runc"))
    assert root.installed() == ["kuasar-common", "kuasar-runc", "kuasar-test-base"]
    assert (root.path / "usr/bin/runc-sandboxer").exists()
    # the [sandbox-parent] helper is a program built for this machine (it names its usage when run bare)
    helper = next(root.path.glob("usr/lib/python3*/*-packages/kuasar_runc_sandboxer/sandbox-parent"))
    proc = run(str(helper), check=False)
    assert proc.returncode == 2 and "usage: sandbox-parent --control FD --pause FD" in proc.stderr
    assert not list((root.path / "usr/lib/systemd/system").glob("kuasar-[!r]*"))


def test_each_sandbox_type_alone(rpms: Built, new_root) -> None:
    for pkg in SANDBOXERS:
        if pkg not in rpms.packages:
            continue
        root = new_root()
        extra = ["kuasar-vmm-guest"] if pkg == "kuasar-vmm" and "kuasar-vmm-guest" in rpms.packages else []
        root.install(*rpms.paths("kuasar-common", pkg, *extra))
        assert root.installed() == sorted(["kuasar-common", pkg, "kuasar-test-base", *extra])
        templates = root.path / "var/lib/kuasar/templates"
        if pkg == "kuasar-vmm":  # VM templates the sandboxer made at run time go with the package
            (templates / "0123abcd").mkdir(parents=True)
            (templates / "0123abcd" / "memory").write_bytes(b"ram")
        root.rpm("-e", pkg)
        assert not (root.path / "usr/bin" / SCRIPTS[pkg][0]).exists()
        assert not templates.exists()


def test_upgrade_keeps_config_and_restarts(rpms: Built, rpms_next: Built, new_root) -> None:
    root = new_root()
    root.systemd_booted()
    root.install(*rpms.paths("kuasar-common", "kuasar-runc"))
    # is-active: a fresh install finds no running sandboxer (the fake systemctl says yes; the
    # upgrade command then finds no task server and stays quiet)
    assert root.systemctl_log() == ["daemon-reload", "preset kuasar-runc.service", "-q is-active kuasar-runc.service"]
    mine = root.path / "etc/sysconfig/kuasar-runc"
    edited = mine.read_text().replace("/run/runc-sandboxer.sock", "/run/my-runc.sock")
    mine.write_text(edited)

    proc = root.install(*rpms_next.paths("kuasar-common", "kuasar-runc"), upgrade=True)
    assert "kuasar-runc.rpmnew" in proc.stderr + proc.stdout
    arch = run("rpm", "-qp", "--qf", "%{ARCH}", str(rpms_next.packages["kuasar-runc"])).stdout
    assert root.rpm("-q", "kuasar-runc").stdout.strip() == "kuasar-runc-0.1.0-2." + arch
    assert mine.read_text() == edited, "the operator's sysconfig was replaced"
    assert "--log-level info" in (root.path / "etc/sysconfig/kuasar-runc.rpmnew").read_text()
    log = root.systemctl_log()[3:]
    assert "try-restart kuasar-runc.service" in log, log
    # then the live upgrade of the task server (kuasar-task-upgrade), only when the sandboxer runs
    assert log.index("-q is-active kuasar-runc.service") > log.index("try-restart kuasar-runc.service"), log
    assert "daemon-reload" in log

    root.rpm("-e", "kuasar-runc")
    assert "--no-reload disable --now kuasar-runc.service" in root.systemctl_log()


def test_scriptlets_stay_quiet_outside_systemd(rpms: Built, new_root) -> None:
    # image builds and chroots have no /run/systemd/system: nothing may be started or enabled
    root = new_root()
    root.install(*rpms.paths("kuasar-common", "kuasar-runc"))
    root.rpm("-e", "kuasar-runc")
    assert root.systemctl_log() == []
