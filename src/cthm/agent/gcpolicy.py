"""The garbage collector's thresholds for a process running an agent.

CPython collects its youngest generation every 700 net allocations of container objects and,
every so often, walks every object the process holds. An agent holds a few objects per binding
(the desired state, its assignments, the verified table: ~500,000 at 100 routers of 1000) and a
cold sync allocates a few more per binding, so with the defaults a third of a cold sync of
100 x 1000 was the collector walking them (`gc.callbacks` timing: 2.5 s -> 1.8 s with the
thresholds below, measured alternately in one sitting). Nearly all of that memory is freed by
reference counting (the values are trees, not cycles): collecting less often only delays the
rare cycle, by at most THRESHOLDS[0] allocations.
"""

from __future__ import annotations

import gc
import threading

# (youngest, middle, oldest): the youngest collected every 20,000 net allocations, not 700.
THRESHOLDS = (20_000, 20, 20)
_PYTHON_DEFAULTS = (700, 10, 10)
_lock = threading.Lock()


def tune_gc() -> bool:
    """Sets THRESHOLDS if the process still has Python's defaults (an embedding application's
    or an operator's own choice, e.g. PYTHONGC-style tuning, is left alone). True if set."""
    with _lock:
        if gc.get_threshold() != _PYTHON_DEFAULTS:
            return False
        gc.set_threshold(*THRESHOLDS)
        return True
