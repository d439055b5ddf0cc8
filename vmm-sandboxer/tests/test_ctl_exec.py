"""vm-exec's wrapper: run by a real ``sh -c`` like the guest agent does, then parsed back."""
from __future__ import annotations

import subprocess

import pytest

from kuasar_vmm_sandboxer.ctl import split_output, wrap_command
from kuasar_shared.errors import Internal, InvalidArgument


def _guest(argv: list[str]) -> str:
    """What the guest's ExecVMProcess answers: ``sh -c`` stdout then stderr, concatenated."""
    done = subprocess.run(["sh", "-c", wrap_command(argv)], capture_output=True, text=True)
    return done.stdout + done.stderr


@pytest.mark.parametrize("argv, expected", [
    (["sh", "-c", "echo out; echo err >&2; exit 42"], ("out\nerr\n", 42)),
    (["printf", "no newline"], ("no newline", 0)),
    (["true"], ("", 0)),
    (["sh", "-c", "echo '__KUASAR_RC=7'; exit 3"], ("__KUASAR_RC=7\n", 3)),
    (["echo", "it's; $(quoted)"], ("it's; $(quoted)\n", 0)),
])
def test_exit_code_and_output_pass_through(argv, expected):
    assert split_output(_guest(argv)) == expected


def test_missing_marker_is_an_error():
    with pytest.raises(Internal):
        split_output("killed before the marker\n")


def test_empty_command_is_rejected():
    with pytest.raises(InvalidArgument):
        wrap_command([])
