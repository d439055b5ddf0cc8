"""hotspots: summaries of py-spy's collapsed stacks (no profiler needed)."""
from __future__ import annotations

import hotspots

_STACK = 'process 1:"runc-task";thread (0x1):"MainThread";main (/x/src/kuasar_runc_task/main.py:10)'
RAW = (f"{_STACK};create (/x/src/kuasar_shared/oci/task.py:5);write_json_atomic (/x/src/kuasar_shared/store.py:40) 6\n"
       f"{_STACK};create (/x/src/kuasar_shared/oci/task.py:5) 2\n"
       f"{_STACK};select (/usr/lib/python3.11/selectors.py:468) 2\n")


def test_self_and_inclusive_counts() -> None:
    summary = hotspots.summarize_collapsed(RAW)
    assert summary["samples"] == 10
    own = {row["function"]: row["percent"] for row in summary["self"]}
    assert own == {"write_json_atomic (kuasar_shared/store.py)": 60.0, "create (oci/task.py)": 20.0,
                   "select (python3.11/selectors.py)": 20.0}
    inclusive = {row["function"]: row["samples"] for row in summary["inclusive"]}
    assert inclusive["main (kuasar_runc_task/main.py)"] == 10
    assert inclusive["create (oci/task.py)"] == 8


def test_garbage_lines_are_ignored() -> None:
    assert hotspots.summarize_collapsed("no count here\n\n 5\n")["samples"] == 0
