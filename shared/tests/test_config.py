"""config: TOML into dataclasses; errors name the file, the dotted key and the expectation."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

from kuasar_shared.config import ConfigError, load_config, parse_config
from kuasar_shared.errors import InvalidArgument


@dataclass
class Virtiofsd:
    path: str
    cache: str = "never"


@dataclass
class Hypervisor:
    vcpus: int
    memory_in_mb: int
    kernel_path: str = "/var/lib/kuasar/vmlinux.bin"
    debug: bool = False
    ratio: float = 1.0
    kernel_params: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    virtiofsd: Optional[Virtiofsd] = None


@dataclass
class Sandbox:
    log_level: str = ""
    enable_tracing: bool = False


@dataclass
class Config:
    hypervisor: Hypervisor
    sandbox: Sandbox = field(default_factory=Sandbox)
    extra: Any = None


GOOD = """
[sandbox]
log_level = "debug"

[hypervisor]
vcpus = 2
memory_in_mb = 1024
ratio = 2
kernel_params = ["console=hvc0", "quiet"]
labels = { a = "b" }

[hypervisor.virtiofsd]
path = "/usr/lib/qemu/virtiofsd"
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_loads_nested_tables_and_defaults(tmp_path) -> None:
    cfg = load_config(write(tmp_path, GOOD), Config)
    assert cfg.sandbox.log_level == "debug"
    assert cfg.hypervisor.vcpus == 2
    assert cfg.hypervisor.ratio == 2.0 and isinstance(cfg.hypervisor.ratio, float)
    assert cfg.hypervisor.kernel_params == ["console=hvc0", "quiet"]
    assert cfg.hypervisor.labels == {"a": "b"}
    assert cfg.hypervisor.virtiofsd == Virtiofsd(path="/usr/lib/qemu/virtiofsd")
    assert cfg.hypervisor.kernel_path == "/var/lib/kuasar/vmlinux.bin"


def test_wrong_type_names_file_key_and_expectation(tmp_path) -> None:
    path = write(tmp_path, '[hypervisor]\nvcpus = "2"\nmemory_in_mb = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, Config)
    assert str(info.value) == "%s: [hypervisor].vcpus: expected integer, got string '2'" % path
    assert isinstance(info.value, InvalidArgument)
    assert info.value.key == "[hypervisor].vcpus"


@pytest.mark.parametrize("text,key,expect", [
    ('[hypervisor]\nvcpus = true\nmemory_in_mb = 1\n', "[hypervisor].vcpus", "expected integer, got boolean True"),
    ('[hypervisor]\nvcpus = 1\nmemory_in_mb = 1\ndebug = "yes"\n', "[hypervisor].debug", "expected boolean"),
    ('[hypervisor]\nvcpus = 1\nmemory_in_mb = 1\nkernel_params = "a"\n', "[hypervisor].kernel_params",
     "expected array"),
    ('[hypervisor]\nvcpus = 1\nmemory_in_mb = 1\nkernel_params = ["a", 3]\n', "[hypervisor].kernel_params[1]",
     "expected string, got integer 3"),
    ('hypervisor = 3\n', "[hypervisor]", "expected table, got integer 3"),
    ('[hypervisor]\nvcpus = 1\nmemory_in_mb = 1\nvirtiofsd = 5\n', "[hypervisor.virtiofsd]",
     "expected table"),
])
def test_type_errors(tmp_path, text: str, key: str, expect: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, Config)
    assert str(info.value).startswith("%s: %s: %s" % (path, key, expect))


def test_missing_required_keys(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[hypervisor]\nvcpus = 1\n'), Config)
    assert "[hypervisor].memory_in_mb: required key is missing (expected integer)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[sandbox]\n'), Config)
    assert "[hypervisor]: required key is missing (expected table)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace('path = "/usr/lib/qemu/virtiofsd"', 'cache = "x"')), Config)
    assert "[hypervisor.virtiofsd].path: required key is missing" in str(info.value)


def test_unknown_keys_warn_with_file_and_dotted_key(tmp_path, caplog) -> None:
    path = write(tmp_path, GOOD + 'future_key = 1\n[hypervisor.new_table]\nx = 1\n[other]\ny = 2\n')
    with caplog.at_level(logging.WARNING, logger="kuasar_shared.config"):
        cfg = load_config(path, Config)
    assert cfg.hypervisor.vcpus == 2
    messages = [r.getMessage() for r in caplog.records]
    assert "%s: unknown key [hypervisor.virtiofsd].future_key ignored" % path in messages
    assert "%s: unknown key [hypervisor.new_table] ignored" % path in messages
    assert "%s: unknown key [other] ignored" % path in messages


def test_missing_file_is_clear(tmp_path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, Config)
    assert str(info.value) == "%s: configuration file does not exist" % path


def test_syntax_error_names_file(tmp_path) -> None:
    path = write(tmp_path, "[hypervisor\nvcpus = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path, Config)
    assert str(info.value).startswith(path + ": invalid TOML")


def test_parse_config_without_file_and_any_field() -> None:
    cfg = parse_config('extra = {x = [1]}\n[hypervisor]\nvcpus = 1\nmemory_in_mb = 2\n', Config, "inline")
    assert cfg.extra == {"x": [1]}
    with pytest.raises(TypeError):
        parse_config("", dict)  # type: ignore[arg-type]
