"""params: task.* kernel parameters, bad values fall back to defaults."""
from kuasar_vmm_task.params import TaskParams, parse_cmdline


def test_defaults_without_task_params():
    assert parse_cmdline("console=ttyS0 quiet panic=-1") == TaskParams()


def test_all_params():
    p = parse_cmdline("console=hvc0 task.log_level=DEBUG task.debug task.sharefs_type=virtiofs "
                      "task.debug_shell=/bin/bash task.enable_tracing task.template")
    assert p == TaskParams(log_level="debug", debug=True, sharefs_type="virtiofs", debug_shell="/bin/bash",
                           enable_tracing=True, template=True)


def test_bad_values_keep_defaults(caplog):
    p = parse_cmdline("task.log_level=loud task.sharefs_type=nfs task.debug_shell=bash task.enable_tracing=false "
                      "task.bogus=1")
    assert p == TaskParams()
    assert "task.log_level=loud" in caplog.text and "task.sharefs_type=nfs" in caplog.text
    assert "task.bogus=1" in caplog.text


def test_quoted_words_and_trace_level():
    assert parse_cmdline('a="x y" task.log_level=trace\n').log_level == "trace"
