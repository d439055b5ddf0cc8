"""daemon.args: upstream-compatible command line with per-type defaults."""
from __future__ import annotations

import pytest

from kuasar_shared.daemon.args import build_parser, parse_args, version_string


def test_defaults_follow_the_sandbox_type() -> None:
    args = parse_args("runc-sandboxer", "0.1.0", [], sandbox_type="runc")
    assert args.listen == "/run/runc-sandboxer.sock"
    assert args.dir == "/run/kuasar-runc"
    assert args.config is None
    assert args.log_level == "info"
    assert args.daemon is False


def test_short_and_long_options() -> None:
    args = parse_args("vmm-sandboxer", "1", ["-l", "/tmp/x.sock", "-d", "/tmp/d", "-c", "/etc/k.toml",
                                             "--log-level", "WARN", "--daemon"], sandbox_type="vmm",
                      config="/var/lib/kuasar/config.toml")
    assert (args.listen, args.dir, args.config, args.log_level, args.daemon) == \
        ("/tmp/x.sock", "/tmp/d", "/etc/k.toml", "warn", True)
    args = parse_args("vmm-sandboxer", "1", ["--listen=/a", "--dir=/b"], sandbox_type="vmm",
                      config="/var/lib/kuasar/config.toml")
    assert (args.listen, args.dir, args.config) == ("/a", "/b", "/var/lib/kuasar/config.toml")


@pytest.mark.parametrize("flag", ["-v", "--version"])
def test_version_prints_name_and_version(flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args("wasm-sandboxer", "0.3.1", [flag], sandbox_type="wasm")
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == "wasm-sandboxer 0.3.1" == version_string("wasm-sandboxer", "0.3.1")


def test_bad_log_level_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args("x", "1", ["--log-level", "loud"], sandbox_type="runc")
    assert info.value.code == 2
    assert "invalid log level 'loud'" in capsys.readouterr().err


def test_parser_can_be_extended() -> None:
    parser = build_parser("runc-task", "1", listen="/run/t.sock", dir="/run/t")
    parser.add_argument("--runtime", default="runc")
    args = parser.parse_args(["--runtime", "youki", "--log-level", "trace"])
    assert (args.runtime, args.log_level, args.listen) == ("youki", "trace", "/run/t.sock")
