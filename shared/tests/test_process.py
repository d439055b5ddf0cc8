"""process: commands run through the process-wide reaper, pipes read asynchronously."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from kuasar_shared import process
from kuasar_shared.daemon.reaper import get_reaper
from kuasar_shared.errors import DeadlineExceeded, Internal


@pytest.mark.asyncio
async def test_run_captures_output_and_exit_code() -> None:
    res = await process.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, b"out\n", b"err\n")
    assert res.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    assert get_reaper().installed  # installed lazily in this loop


@pytest.mark.asyncio
async def test_run_check_raises_command_error_with_stderr() -> None:
    with pytest.raises(process.CommandError) as info:
        await process.run(["sh", "-c", "echo boom >&2; exit 2"])
    err = info.value
    assert isinstance(err, Internal)
    assert err.returncode == 2 and err.stderr == b"boom\n"
    assert err.argv[0] == "sh"
    assert "exited with status 2: boom" in str(err)


@pytest.mark.asyncio
async def test_missing_program_is_command_error() -> None:
    with pytest.raises(process.CommandError) as info:
        await process.run(["/nonexistent/prog"])
    assert info.value.returncode is None
    assert "cannot run /nonexistent/prog" in str(info.value)


@pytest.mark.asyncio
async def test_input_is_written_and_large_output_is_read() -> None:
    data = os.urandom(3 * 1024 * 1024)
    res = await process.run(["cat"], input=data)
    assert res.stdout == data


@pytest.mark.asyncio
async def test_input_to_a_process_that_ignores_it() -> None:
    res = await process.run(["true"], input=b"x" * (1 << 20))
    assert res.returncode == 0


@pytest.mark.asyncio
async def test_devnull_fd_cwd_env_and_pass_fds(tmp_path) -> None:
    out = tmp_path / "out.txt"
    r, w = os.pipe()
    with open(out, "wb") as f:
        res = await process.run(["sh", "-c", "pwd; echo $FOO; echo passed >/dev/fd/%d" % w], stdout=f.fileno(),
                                stderr=process.DEVNULL, cwd=str(tmp_path), env={"FOO": "bar", "PATH": "/usr/bin:/bin"},
                                pass_fds=[w])
    os.close(w)
    assert res.stdout == b"" and res.stderr == b""
    assert out.read_text() == "%s\nbar\n" % tmp_path
    assert os.read(r, 100) == b"passed\n"
    os.close(r)


@pytest.mark.asyncio
async def test_timeout_kills_and_reaps() -> None:
    with pytest.raises(DeadlineExceeded) as info:
        await process.run(["sleep", "30"], timeout=0.2)
    assert "sleep 30" in str(info.value)


@pytest.mark.asyncio
async def test_cancel_kills_and_reaps_the_child(tmp_path) -> None:
    pidfile = tmp_path / "pid"
    task = asyncio.ensure_future(process.run(["sh", "-c", "echo $$ > %s; exec sleep 30" % pidfile]))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if pidfile.exists() and pidfile.read_text().strip():
            break
    pid = int(pidfile.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped: not even a zombie remains


@pytest.mark.asyncio
async def test_spawn_wait_and_signal() -> None:
    proc = process.spawn(["sleep", "30"])
    assert proc.returncode is None and "running" in repr(proc)
    proc.send_signal(signal.SIGTERM)
    event = await asyncio.wait_for(proc.wait(), 5)
    assert event.status == 128 + signal.SIGTERM and proc.returncode == 143
    proc.kill()  # already reaped: a no-op, never signals a recycled pid
    assert "exited 143" in repr(proc)


@pytest.mark.asyncio
async def test_spawn_with_pipes_owned_by_caller() -> None:
    proc = process.spawn(["cat"], stdin=process.PIPE, stdout=process.PIPE)
    assert isinstance(proc.stdin, int) and isinstance(proc.stdout, int)
    os.write(proc.stdin, b"ping")
    os.close(proc.stdin)
    proc.stdin = None
    await proc.wait()
    assert os.read(proc.stdout, 10) == b"ping"
    proc.close_pipes()
    assert proc.stdout is None


@pytest.mark.asyncio
async def test_wait_cancellation_does_not_kill() -> None:
    proc = process.spawn(["sleep", "0.3"])
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), 0.05)
    assert (await asyncio.wait_for(proc.wait(), 5)).status == 0


@pytest.mark.asyncio
async def test_many_concurrent_runs() -> None:
    results = await asyncio.gather(*(process.run(["sh", "-c", "echo %d; exit %d" % (i, i % 3)], check=False)
                                     for i in range(40)))
    assert [r.returncode for r in results] == [i % 3 for i in range(40)]
    assert [r.stdout for r in results] == [b"%d\n" % i for i in range(40)]


def test_works_in_successive_loops() -> None:
    for _ in range(2):
        assert asyncio.run(process.run(["true"])).returncode == 0
