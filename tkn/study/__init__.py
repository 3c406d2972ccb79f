"""Studies that train many runs into one folder and read them back: the library behind ``tkn sweep`` and
``tkn frontier``.

* :mod:`tkn.study.sweep`: the L2/β (or speed-up budget) sweep of the paper's Fig. 5
  (:func:`~tkn.study.sweep.run_sweep`).
* :mod:`tkn.study.frontier`: test error against measured time for narrower dense CNNs and budgeted TKNs
  (:func:`~tkn.study.frontier.run_frontier`; the caller passes the timer).

Both are resumable (a finished run is read back, not retrained) and write their tables atomically.
"""
from __future__ import annotations

from tkn.study.frontier import Point, plan_points, run_frontier, summarize, write_frontier
from tkn.study.sweep import baseline_macs, run_sweep, write_rows

__all__ = ["run_sweep", "write_rows", "baseline_macs", "Point", "plan_points", "run_frontier", "summarize",
           "write_frontier"]
