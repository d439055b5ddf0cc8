"""The metrics a sandbox type adds to its sandboxer's: histograms it observes where the work is done, and
per-pod gauges read at scrape time.

A type declares them (:class:`TypeMetrics`, as ``PodSandboxer.type_metrics``) and calls
:meth:`TypeMetrics.observe` at its points; nothing is recorded until the metrics endpoint binds them
(``--metrics-listen``), so that with metrics off a type pays one attribute test and prometheus-client is
never loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Optional, Sequence, TypeVar

__all__ = ["Histogram", "PodGauge", "TypeMetrics"]

P = TypeVar("P")


@dataclass(frozen=True)
class Histogram:
    """A histogram without labels; its name ends with its unit (``_seconds``)."""

    name: str
    help: str
    buckets: tuple[float, ...] = ()


@dataclass(frozen=True)
class PodGauge(Generic[P]):
    """A gauge with the label ``pod``, read from each pod at scrape time (None: no sample for that pod)."""

    name: str
    help: str
    read: Callable[[P], Optional[float]]


class TypeMetrics(Generic[P]):
    """The declared series of one sandbox type and, once bound, where its observations go."""

    def __init__(self, histograms: Sequence[Histogram] = (), pod_gauges: Sequence[PodGauge[P]] = ()) -> None:
        self.histograms = tuple(histograms)
        self.pod_gauges = tuple(pod_gauges)
        self._sink: Optional[Callable[[str, float], None]] = None

    def bind(self, sink: Callable[[str, float], None]) -> None:
        """Send observations to ``sink(name, value)`` from now on (the metrics endpoint does)."""
        self._sink = sink

    def observe(self, name: str, value: float) -> None:
        """Record ``value`` in the histogram ``name``; nothing while metrics are off."""
        if self._sink is None:
            return
        if name not in {h.name for h in self.histograms}:
            raise ValueError("%s is not a declared histogram of this sandbox type" % name)
        self._sink(name, value)
