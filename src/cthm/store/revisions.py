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

A write that has the binding as it committed it (created or updated; None: deleted) leaves it
with its note: then a reload reads none of the bindings, only the router's row (`edits()`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from cthm.domain import HelperBinding

NOTES_PER_ROUTER = 64
# The bindings kept with the newest notes of a router (a reload follows each change within
# milliseconds; older ones are read): bounds what the notes hold to ~MAX_ROUTERS * 16 bindings.
CONTENTS_PER_ROUTER = 16
MAX_ROUTERS = 10000

# (router id, revision, the binding changed: a binding id, "" for none, None for unknown)
RevisionNote = tuple[str, int, str | None]
# (router id, revision) -> the binding that revision changed, as committed (None: deleted)
NoteContents = Mapping[tuple[str, int], HelperBinding | None]


class RevisionNotes:
    """Thread-safe; one per Store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notes: OrderedDict[str, dict[int, str | None]] = OrderedDict()
        # Router id -> revision -> the binding as committed, for the notes that gave it.
        self._contents: dict[str, dict[int, HelperBinding | None]] = {}

    def note(self, notes: Iterable[RevisionNote], contents: NoteContents | None = None) -> None:
        """contents: the bindings some of these revisions changed, as committed."""
        with self._lock:
            for router_id, revision, binding_id in notes:
                held = self._notes.pop(router_id, None) or {}
                held[revision] = binding_id
                known = self._contents.setdefault(router_id, {})
                if binding_id and contents is not None and (router_id, revision) in contents:
                    known[revision] = contents[router_id, revision]
                else:
                    known.pop(revision, None)  # a note given again without its binding
                while len(held) > NOTES_PER_ROUTER:
                    oldest = min(held)
                    del held[oldest]
                    known.pop(oldest, None)
                while len(known) > CONTENTS_PER_ROUTER:
                    del known[min(known)]
                self._notes[router_id] = held  # most recently changed last
            while len(self._notes) > MAX_ROUTERS:
                gone, _ = self._notes.popitem(last=False)
                self._contents.pop(gone, None)

    def forget(self, router_id: str) -> None:
        with self._lock:
            self._notes.pop(router_id, None)
            self._contents.pop(router_id, None)

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

    def edits(self, router_id: str, since: int, now: int) -> dict[str, HelperBinding | None] | None:
        """The bindings the router's revisions since+1..now changed, each as its newest of
        those revisions committed it (None: deleted); None when one of those revisions was not
        noted here, or changed a binding without giving it."""
        if now < since:
            return None
        with self._lock:
            held = self._notes.get(router_id)
            if held is None:
                return None if now > since else {}
            known = self._contents.get(router_id, {})
            found: dict[str, HelperBinding | None] = {}
            for revision in range(since + 1, now + 1):
                binding_id = held.get(revision)
                if binding_id is None:
                    return None
                if binding_id:
                    if revision not in known:
                        return None
                    found[binding_id] = known[revision]  # a later revision's wins
        return found
