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
with its note: then a reload reads none of the bindings (`edits()`).

And not the router's row either (`router_edits()`), when nothing can have changed it but this
process's binding writes, which move only its revision and updated_at (both in their notes):
the router was read since anything told otherwise (`reading()`/`read()`: trust begins with a
read, any `distrust()` ends it), and each revision after the one read is a noted binding write.
Distrusted: routers another process's commit changed (the change feed), routers a unit of
work changed without a note (created, deleted, resync asked) or whose status it wrote (an
agent's report: status moves without a revision), everything when the feed cannot say what
changed. What no one tells (a write of another process on SQLite, whose writers notify no
one) is seen at the first gap in the revisions, or by the next full sync, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from cthm.domain import HelperBinding, Router

NOTES_PER_ROUTER = 64
# The bindings kept with the newest notes of a router (a reload follows each change within
# milliseconds; older ones are read): bounds what the notes hold to ~MAX_ROUTERS * 16 bindings.
CONTENTS_PER_ROUTER = 16
MAX_ROUTERS = 10000

# Routers read since their last distrust (trusted) kept at most; beyond, all are read again.
MAX_TRUSTED = 2 * MAX_ROUTERS

# (router id, revision, the binding changed: a binding id, "" for none, None for unknown, the
# router's updated_at as that revision committed it: None if not known)
RevisionNote = tuple[str, int, str | None, datetime | None]
# (router id, revision) -> the binding that revision changed, as committed (None: deleted)
NoteContents = Mapping[tuple[str, int], HelperBinding | None]


class RevisionNotes:
    """Thread-safe; one per Store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notes: OrderedDict[str, dict[int, str | None]] = OrderedDict()
        # Router id -> revision -> the binding as committed, for the notes that gave it.
        self._contents: dict[str, dict[int, HelperBinding | None]] = {}
        # Router id -> revision -> the router's updated_at as that revision committed it.
        self._updated: dict[str, dict[int, datetime]] = {}
        # Routers read since their last distrust; _epoch moves at every distrust, so a read
        # that began before one does not make its router trusted (see read()).
        self._trusted: set[str] = set()
        self._epoch = 0

    def note(self, notes: Iterable[RevisionNote], contents: NoteContents | None = None) -> None:
        """contents: the bindings some of these revisions changed, as committed."""
        with self._lock:
            for router_id, revision, binding_id, updated_at in notes:
                held = self._notes.pop(router_id, None) or {}
                if held and max(held) > revision:
                    # Revisions only grow: newer ones held are of a router of the same id
                    # deleted before (or noted out of order: then a gap, read).
                    for newer in [r for r in held if r > revision]:
                        del held[newer]
                        self._contents.get(router_id, {}).pop(newer, None)
                        self._updated.get(router_id, {}).pop(newer, None)
                held[revision] = binding_id
                known = self._contents.setdefault(router_id, {})
                if binding_id and contents is not None and (router_id, revision) in contents:
                    known[revision] = contents[router_id, revision]
                else:
                    known.pop(revision, None)  # a note given again without its binding
                times = self._updated.setdefault(router_id, {})
                if updated_at is not None:
                    times[revision] = updated_at
                else:
                    times.pop(revision, None)
                while len(held) > NOTES_PER_ROUTER:
                    oldest = min(held)
                    del held[oldest]
                    known.pop(oldest, None)
                    times.pop(oldest, None)
                while len(known) > CONTENTS_PER_ROUTER:
                    del known[min(known)]
                self._notes[router_id] = held  # most recently changed last
            while len(self._notes) > MAX_ROUTERS:
                gone, _ = self._notes.popitem(last=False)
                self._contents.pop(gone, None)
                self._updated.pop(gone, None)

    def forget(self, router_ids: Iterable[str]) -> None:
        """Drops these routers' notes and trust (a router created or deleted: notes of a router
        of the same id before must never be joined to its new revisions)."""
        with self._lock:
            self._epoch += 1
            for router_id in router_ids:
                self._notes.pop(router_id, None)
                self._contents.pop(router_id, None)
                self._updated.pop(router_id, None)
                self._trusted.discard(router_id)

    def distrust(self, router_ids: Iterable[str] | None) -> None:
        """These routers (None: all) may have changed otherwise than by this process's noted
        writes: their next reload reads the router's row."""
        with self._lock:
            self._epoch += 1
            if router_ids is None:
                self._trusted.clear()
            else:
                self._trusted.difference_update(router_ids)

    def reading(self) -> int:
        """Called before a read of routers' rows begins; give what it returns to read()."""
        with self._lock:
            return self._epoch

    def read(self, router_id: str, began: int) -> None:
        """The router's row was read, the read having begun at `began` (reading()): trusted,
        unless something was distrusted since the read began (it may not have seen that)."""
        with self._lock:
            if self._epoch != began:
                return
            if len(self._trusted) >= MAX_TRUSTED:
                self._trusted.clear()
            self._trusted.add(router_id)

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

    def router_edits(self, router: Router) -> tuple[Router, dict[str, HelperBinding | None]] | None:
        """`router` (as read, or as this gave it before) at the newest revision noted for it,
        and the bindings its revisions since changed, each as committed (None: deleted); None
        (then read it) unless the router is trusted, a newer revision was noted, and every
        revision after `router`'s is a noted binding write that gave its binding."""
        since = router.revision_number
        with self._lock:
            held = self._notes.get(router.id)
            if held is None or router.id not in self._trusted:
                return None
            now = max(held)
            if now <= since:
                return None  # nothing of ours is newer: whatever woke the agent, read
            updated_at = self._updated.get(router.id, {}).get(now)
            if updated_at is None:
                return None
            known = self._contents.get(router.id, {})
            found: dict[str, HelperBinding | None] = {}
            for revision in range(since + 1, now + 1):
                binding_id = held.get(revision)
                if not binding_id or revision not in known:
                    return None  # a gap, a router-only change (a rename) or no binding given
                found[binding_id] = known[revision]  # a later revision's wins
        # Only the revision and updated_at move with a binding write (its status does not: a
        # status write distrusts the router).
        return replace(router, revision_number=now, updated_at=updated_at), found
