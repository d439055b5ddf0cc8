"""config_quark.toml: defaults, choices and error messages naming file and key."""
from __future__ import annotations

import pytest

from kuasar_shared.config import ConfigError

from kuasar_quark_sandboxer import config


def test_defaults_when_default_file_is_absent(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG", str(tmp_path / "absent.toml"))
    cfg = config.load(None)
    assert (cfg.sandbox.kernel, cfg.runsc.path, cfg.runsc.platform, cfg.runsc.network) == \
        ("runsc", "runsc", "ptrace", "sandbox")
    assert cfg.runsc.hide_proc_sys_net and cfg.runsc.extra_flags == [] and cfg.quark.path == "quark"


def test_full_file_and_errors(tmp_path) -> None:
    path = tmp_path / "config_quark.toml"
    path.write_text('[sandbox]\nkernel = "quark"\n[runsc]\nplatform = "systrap"\nnetwork = "none"\n'
                    'extra_flags = ["--debug"]\n[quark]\npath = "/opt/quark/bin/quark"\n')
    cfg = config.load(str(path))
    assert cfg.sandbox.kernel == "quark" and cfg.runsc.platform == "systrap"
    assert cfg.runsc.extra_flags == ["--debug"] and cfg.quark.path == "/opt/quark/bin/quark"
    path.write_text('[runsc]\nplatform = "kvm2"\n')
    with pytest.raises(ConfigError, match="runsc.platform.*ptrace, systrap, kvm"):
        config.load(str(path))
    path.write_text('[runsc]\nextra_flags = "--debug"\n')
    with pytest.raises(ConfigError, match=r"\[runsc\].extra_flags: expected array"):
        config.load(str(path))
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "missing.toml"))
