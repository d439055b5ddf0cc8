"""daemon.log: upstream level names, one handler however often it is set up."""
from __future__ import annotations

import io
import logging

import pytest

from kuasar_shared.daemon.log import TRACE, level_of, setup_logging
from kuasar_shared.errors import InvalidArgument


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.mark.parametrize("name,level", [("trace", TRACE), ("DEBUG", logging.DEBUG), ("info", logging.INFO),
                                        ("warn", logging.WARNING), ("error", logging.ERROR)])
def test_level_names(name: str, level: int) -> None:
    assert level_of(name) == level


def test_unknown_level() -> None:
    with pytest.raises(InvalidArgument) as info:
        level_of("verbose")
    assert "verbose" in str(info.value)


def test_setup_replaces_its_own_handler(monkeypatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    first, second = io.StringIO(), io.StringIO()
    setup_logging("debug", stream=first)
    setup_logging("warn", stream=second, name="runc-sandboxer")
    log = logging.getLogger("kuasar_shared.test")
    log.info("hidden")
    log.warning("shown %s", "pod-1")
    assert first.getvalue() == ""
    line = second.getvalue()
    assert line.count("\n") == 1 and "runc-sandboxer WARNING kuasar_shared.test: shown pod-1" in line


def test_journal_lines_have_no_timestamp(monkeypatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    out = io.StringIO()
    setup_logging("trace", stream=out)
    logging.getLogger("x").log(TRACE, "deep")
    assert out.getvalue() == "TRACE x: deep\n"


def test_log_to_file(tmp_path) -> None:
    path = tmp_path / "d.log"
    handler = setup_logging("info", filename=str(path))
    logging.getLogger("y").error("to file")
    handler.flush()
    assert "ERROR y: to file" in path.read_text()
