"""Which bindings each router revision committed by this process changed (issue 14).

An agent's partial sync reloads a router whose revision moved. Scanning the router's thousand
(id, revision) pairs to find the few changed bindings cost ~2 ms; the writes of this process
already know them. So every unit of work that moves a router's revision leaves, once committed,
one note per new revision: the binding it changed, none (the name only), or "unknown" (a write
path that does not say). `changed()` answers only when every revision in the range has a note
of this process: a write of another process (a replica, a direct edit) leaves a gap, and a
reload then scans as before. Notes are taken after the commit, so a rolled-back write never
leaves one; a revision is read by the agent before its note is taken at most in that moment,
and then is a gap too. Bounded: the last NOTES_PER_ROUTER notes of at most MAX_ROUTERS routers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

NOTES_PER_ROUTER = 64
MAX_ROUTERS = 10000

# (router id, revision, the binding changed: a binding id, "" for none, None for unknown)
RevisionNote = tuple[str, int, str | None]


class RevisionNotes:
    """Thread-safe; one per Store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notes: OrderedDict[str, dict[int, str | None]] = OrderedDict()

    def note(self, notes: Iterable[RevisionNote]) -> None:
        with self._lock:
            for router_id, revision, binding_id in notes:
                held = self._notes.pop(router_id, None) or {}
                held[revision] = binding_id
                while len(held) > NOTES_PER_ROUTER:
                    del held[min(held)]
                self._notes[router_id] = held  # most recently changed last
            while len(self._notes) > MAX_ROUTERS:
                self._notes.popitem(last=False)

    def forget(self, router_id: str) -> None:
        with self._lock:
            self._notes.pop(router_id, None)

    def changed(self, router_id: str, since: int, now: int) -> frozenset[str] | None:
        """The bindings the router's revisions since+1..now changed; None when one of those
        revisions was not noted here (or said nothing of its bindings)."""
        if now < since:
            return None
        with self._lock:
            held = self._notes.get(router_id)
            if held is None:
                return None if now > since else frozenset()
            found: set[str] = set()
            for revision in range(since + 1, now + 1):
                binding_id = held.get(revision)
                if binding_id is None:
                    return None
                if binding_id:
                    found.add(binding_id)
        return frozenset(found)
