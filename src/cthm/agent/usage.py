"""Live helper usage as last read, for the metrics (cthm_binding_helper_connections and
_expectations, cthm.metrics): a scrape never runs conntrack.

The agent reads the usage of the routers it holds bindings for when its periodic resync comes,
in a thread of its own (the timer's namespace watch is not held up), at most `per_pass`
routers a pass, taken round robin so that every router is read within a few passes; each read
is two `conntrack -L` calls bounded by conntrack_usage's timeout. A router whose namespace
cannot be read shows no series (a stale figure would lie); a router the agent forgets loses
its series at the next pass. The reading is also kept in the kernel state book, whose
summaries carry it to the API for a node agent (kernel_state's usage of its routers).
Routers come from the kernel state book: the ones whose desired table is known and not empty,
with their namespace.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cthm import metrics
from cthm.agent.kernel_state import KernelStateBook
from cthm.netfilter import HelperUsage, NftError

log = logging.getLogger(__name__)

USAGE_ROUTERS_PER_PASS = 100  # at most this many routers' conntrack tables read a pass

UsageRead = Callable[[str], HelperUsage]  # namespace -> its usage, read now (NftError if not)


class UsageRefresher:
    """One pass reads the next routers' usage and publishes it; thread-safe (one pass at once)."""

    def __init__(
        self, book: KernelStateBook, read: UsageRead, *, per_pass: int = USAGE_ROUTERS_PER_PASS
    ) -> None:
        self._book = book
        self._read = read
        self._per_pass = per_pass
        self._lock = threading.Lock()
        self._cursor = ""  # the last router id read: the next pass goes on after it

    def refresh(self, stop: threading.Event | None = None) -> list[str]:
        """Reads up to per_pass routers' usage (those after the last one read, by id) and
        publishes it; returns the ids read. Routers no longer held lose their series."""
        with self._lock:
            held = self._book.with_bindings()
            for gone in metrics.usage_routers() - set(held):
                metrics.forget_usage(gone)
                self._book.usage_unknown(gone)
            ids = sorted(held)
            if not ids:
                return []
            start = next((i for i, rid in enumerate(ids) if rid > self._cursor), 0)
            chosen = (ids[start:] + ids[:start])[: self._per_pass]
            done = []
            for router_id in chosen:
                if stop is not None and stop.is_set():
                    break
                self._refresh_one(router_id, *held[router_id])
                done.append(router_id)
                self._cursor = router_id
            return done

    def _refresh_one(
        self, router_id: str, namespace: str, keys: frozenset[tuple[str, str, int]]
    ) -> None:
        try:
            usage = self._read(namespace)
        except NftError as exc:
            log.debug("router %s: helper usage not read: %s", router_id, exc)
            metrics.forget_usage(router_id)
            self._book.usage_unknown(router_id)
            return
        counts = {key: (usage.connections[key], usage.expectations[key]) for key in sorted(keys)}
        metrics.publish_usage(router_id, counts)
        # For node agents' summaries to the API (kernel_state shows it for their routers).
        self._book.usage_read(
            router_id,
            [
                {
                    "helper": helper,
                    "protocol": protocol,
                    "port": port,
                    "connections": connections,
                    "expectations": expectations,
                }
                for (helper, protocol, port), (connections, expectations) in counts.items()
            ],
        )
