"""procstats: percentiles, summaries and /proc readings of this very process."""
from __future__ import annotations

import os

import procstats


def test_percentile_interpolates() -> None:
    values = [float(v) for v in range(1, 101)]
    assert procstats.percentile(values, 0) == 1.0
    assert procstats.percentile(values, 50) == 50.5
    assert procstats.percentile(values, 100) == 100.0
    assert procstats.percentile([7.0], 99) == 7.0


def test_latency_summary_is_ordered() -> None:
    summary = procstats.latency_summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary["n"] == 5
    assert summary["min"] == 1.0 and summary["max"] == 5.0 and summary["mean"] == 3.0
    assert summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]


def test_own_process_readings() -> None:
    mem = procstats.smaps(os.getpid())
    assert 0 < mem.pss_kb <= mem.rss_kb
    cpu = procstats.cpu_times([os.getpid()])
    assert cpu.own > 0 and cpu.children >= 0
    assert procstats.cmdline(os.getpid())
    assert not procstats.is_zombie(os.getpid())
    assert os.getpid() in procstats.descendants(os.getppid(), procstats.children_map())


def test_gone_process_counts_as_nothing() -> None:
    gone = 2 ** 22 + 1  # above the default pid_max
    assert procstats.smaps(gone) == procstats.Memory()
    assert procstats.cpu_times([gone]) == procstats.CpuTimes()
    assert procstats.is_zombie(gone)
    assert procstats.cmdline(gone) == []
