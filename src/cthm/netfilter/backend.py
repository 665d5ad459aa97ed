"""The nftables backend the agent uses: read, apply (full sync), update (partial sync), delete
cthm's table in a router namespace, and ask the kernel which helpers it has. Every write is one
atomic transaction.

With the libnftables runner, read() asks the namespace's ruleset generation first (issue 14,
netfilter/libnftables.py): when no commit happened in the namespace since the last listing, the
table is that listing's, and nft is not run (a no-op resync lists nothing); any commit, by
anyone, makes the next read list again."""

from __future__ import annotations

import logging
import re
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, NamedTuple, overload

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter.errors import NftNotFound, UnsafeValue
from cthm.netfilter.listing import expected_listing
from cthm.netfilter.model import (
    TABLE_FAMILY,
    TABLE_NAME,
    KernelTable,
    check_owner,
    helper_object_name,
    owner_from_comment,
    set_name,
)
from cthm.netfilter.parse import parse_set, parse_table, table_comment
from cthm.netfilter.render import (
    desired_table,
    into_absent_table,
    render,
    render_delete,
    render_probe,
)
from cthm.netfilter.runner import (
    Batcher,
    Generation,
    GenerationReader,
    NftRunner,
    SetReader,
    TableProbe,
    TrackedRunner,
)
from cthm.netfilter.transaction import Transaction

if TYPE_CHECKING:
    from cthm.netfilter.sync_processes import SyncProcesses

log = logging.getLogger(__name__)

LIST_COMMAND = f"list table {TABLE_FAMILY} {TABLE_NAME}"
# Full syncs in a row whose read-back's text listing differed from listing.py's though the
# table was the desired one: then only the JSON listing is read (listing.py's doc).
_TEXT_MISSES = 8
LIST_SET_COMMAND = f"list set {TABLE_FAMILY} {TABLE_NAME} {{name}}"

# A port set of the layout, by what it holds: (direction, helper type, protocol).
SetKey = tuple[Direction, str, Protocol]
# The handle of cthm's table in a JSON listing (nft writes family, name, handle in this order).
_TABLE_HANDLE = re.compile(
    rf'"table": {{"family": "{TABLE_FAMILY}", "name": "{TABLE_NAME}", "handle": (\d+)'
)


class _Shown(NamedTuple):
    """A text listing of cthm's table, and the generation it was listed at (None: unknown)."""

    text: str
    generation: Generation | None


class _Listing(NamedTuple):
    """A JSON listing of cthm's table not parsed yet, and the generation it was listed at (None:
    unknown, or not one state throughout)."""

    text: str
    generation: Generation | None


def _sort_key(a: Assignment) -> tuple[Protocol, int, Direction]:
    """The order of KernelTable.assignments (render's and parse's)."""
    return (a.protocol, a.port, a.direction)


def _set_order(key: SetKey) -> tuple[str, str]:
    name = set_name(key[0], helper_object_name(key[1], key[2]))
    return (name.casefold(), name)


def _port_sets(assignments: Iterable[Assignment]) -> dict[SetKey, set[int]]:
    """Assignments grouped into the layout's sets. Refuses, as render does, two helpers on one
    (protocol, port) in one direction; the values themselves are checked where they reach nft
    text (a set that would appear makes update() decline, and apply() checks everything)."""
    sets: dict[SetKey, set[int]] = {}
    try:
        for a in assignments:  # the hot loop of a partial sync: one dict and one set operation
            key = (a.direction, a.helper, a.protocol)
            ports = sets.get(key)
            if ports is None:
                ports = sets[key] = set()
            ports.add(a.port)
        # Two helpers on one port of a direction and protocol: two of its sets share the port.
        keys = sorted(sets, key=lambda k: (k[0], k[2], k[1]))
    except (AttributeError, TypeError) as exc:  # not Assignments, or values of odd types
        raise UnsafeValue(f"assignments cthm cannot render: {exc}") from exc
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            if (first[0], first[2]) != (second[0], second[2]):
                break
            common = sets[first] & sets[second]
            if common:
                direction, helper, protocol = first
                raise UnsafeValue(
                    f"{direction} {protocol} port {min(common)} assigned both {helper} and "
                    f"{second[1]}"
                )
    return sets


class NftablesBackend:
    label = "nftables"  # for logs: which backend did what

    def __init__(
        self,
        runner: NftRunner,
        *,
        owner: str | None = None,
        processes: SyncProcesses | None = None,
    ) -> None:
        """owner: the deployment id every table this backend writes is marked with (its
        comment `cthm:<owner>`); None writes unmarked tables (tests, tools that only read).
        processes: kernel-worker processes that share this backend's full syncs (sync();
        closed with it), made with the same owner."""
        self.runner = runner
        self._processes = processes
        self.owner = check_owner(owner) if owner is not None else None
        # The last listing parsed per namespace. parse_table is a pure function of the listing
        # text, and an unchanged table lists byte-for-byte the same (handles included), so an
        # equal text gets the same (immutable) result without parsing a thousand map elements
        # again: every no-op resync and every read before a change hits it.
        self._parsed: dict[str, tuple[str, KernelTable | None]] = {}
        # The last table update() returned per namespace, with its assignments by set.
        self._sets: dict[str, tuple[KernelTable, dict[SetKey, set[int]]]] = {}
        self._parsed_lock = threading.Lock()
        # With a runner that reads generations (libnftables): per namespace, the generation
        # of the last listing (no commit since: the table is unchanged, not listed again), the
        # generation our own apply() left when its commit was the only one, and the owner known
        # for a table handle (a table's comment never changes; a handle names one table of
        # one namespace instance, the generation's context).
        self._tracked: TrackedRunner | None = (
            runner if callable(getattr(runner, "run_tracked", None)) else None  # type: ignore[assignment]
        )
        # With a runner that reads sets by netlink (libnftables): update()'s read-back of the
        # touched sets without nft, in the same call as the commit (netfilter/setread.py);
        # nft's listing of a set the netlink reader cannot vouch for.
        self._set_reader: SetReader | None = (
            runner  # type: ignore[assignment]
            if callable(getattr(runner, "read_port_set", None))
            and callable(getattr(runner, "run_and_read_sets", None))
            else None
        )
        # And one that tells by netlink whether the table exists: the first read of a
        # namespace (a cold sync's, mostly of routers with no table yet) runs no nft when
        # there is none.
        self._table_probe: TableProbe | None = (
            runner if callable(getattr(runner, "table_exists", None)) else None  # type: ignore[assignment]
        )
        # With a runner that batches calls (libnftables): sync()'s read, apply and read-back
        # in one hand-off to its thread.
        self._batcher: Batcher | None = (
            runner if callable(getattr(runner, "batch", None)) else None  # type: ignore[assignment]
        )
        # And one that reads a generation from the calling thread (no hand-off): a read of a
        # namespace listed before, with no commit since, is answered without its thread.
        self._generations: GenerationReader | None = (
            runner if callable(getattr(runner, "generation", None)) else None  # type: ignore[assignment]
        )
        self._listed: dict[str, Generation] = {}
        self._committed: dict[str, Generation] = {}
        self._text_misses = 0  # (_TEXT_MISSES)
        self._owners: dict[str, tuple[int, int, str | None]] = {}

    def read(self, namespace: str) -> KernelTable | None:
        """cthm's table in the namespace; None when there is none."""
        return self._read(namespace, ask_first=True)

    @overload
    def _read(
        self, namespace: str, *, ask_first: bool, probe: bool = ..., raw: Literal[False] = ...
    ) -> KernelTable | None: ...

    @overload
    def _read(
        self, namespace: str, *, ask_first: bool, probe: bool = ..., raw: bool
    ) -> KernelTable | _Listing | None: ...

    def _read(
        self, namespace: str, *, ask_first: bool, probe: bool = False, raw: bool = False
    ) -> KernelTable | _Listing | None:
        """read(); ask_first: the generation is asked from this thread before anything (False:
        the caller just asked it); probe: whether the table exists is asked first even for a
        namespace listed before (in sync()'s visit that costs one netlink question, and a table
        deleted behind our back then costs no failing nft run); raw: a listing not known
        already is returned unparsed, for the caller to `_finish` (sync(): parsed on the
        agent's thread, not on the runner's, whose next namespace's nft work goes on
        meanwhile)."""
        with self._parsed_lock:
            last = self._parsed.get(namespace)
            since = self._listed.get(namespace) if last is not None else None
            committed = namespace in self._committed
        # Nothing known of the namespace (and no apply of ours since): ask whether the table
        # exists at all before listing it. Known namespaces skip this (their generation does).
        if (
            (probe or (since is None and not committed))
            and self._table_probe is not None
            and self._table_probe.table_exists(namespace, TABLE_NAME) is False
        ):
            self._forget(namespace)
            return None
        if since is not None and ask_first and self._unchanged(namespace, since):
            assert last is not None
            return last[1]  # no commit in the namespace since that listing
        generation: Generation | None = None
        try:
            if self._tracked is not None:
                before, after, listed = self._tracked.run_tracked(
                    namespace, LIST_COMMAND, json=True, unless=since
                )
                if listed is None and last is not None:
                    return last[1]  # no commit in the namespace since that listing
                text = listed or ""
                generation = before if before == after else None
            else:
                text = self.runner.run(namespace, LIST_COMMAND, json=True)
        except NftNotFound:
            self._forget(namespace)
            return None
        if raw and (last is None or last[0] != text):
            return _Listing(text, generation)
        return self._finish(namespace, _Listing(text, generation), last)

    def _finish(
        self,
        namespace: str,
        listing: _Listing,
        last: tuple[str, KernelTable | None] | None = None,
    ) -> KernelTable | None:
        """The table of a listing of cthm's table in the namespace (read()'s second half):
        parsed, its owner known, remembered as the namespace's last listing. Any thread may
        finish a listing: (text, generation) pairs are always one listing's, so whichever
        finishes last leaves a true pair."""
        text, generation = listing
        if last is not None and last[0] == text:
            table: KernelTable | None = last[1]
        else:
            table = parse_table(text)
            if table is not None and table.owner is None:
                # nft 1.0.6 leaves the table's comment out of JSON: known for this table from
                # before, or one text listing.
                try:
                    owner = self._owner(namespace, text, generation)
                except NftNotFound:
                    self._forget(namespace)  # deleted between the two listings
                    return None
                table = replace(table, owner=owner)
        with self._parsed_lock:
            self._parsed[namespace] = (text, table)
            if generation is not None:
                self._listed[namespace] = generation
            else:
                self._listed.pop(namespace, None)
        return table

    def _unchanged(self, namespace: str, since: Generation) -> bool:
        """Whether the namespace is still at generation `since`, asked without a hand-off to
        the runner's thread; False when that cannot be asked."""
        return self._generations is not None and self._generations.generation(namespace) == since

    def _last_if_unchanged(self, namespace: str) -> tuple[KernelTable | None] | None:
        """(the last table read,) when no commit happened in the namespace since it was
        listed, asked without a hand-off; None when that is not known so."""
        with self._parsed_lock:
            last = self._parsed.get(namespace)
            since = self._listed.get(namespace) if last is not None else None
        if last is None or since is None or not self._unchanged(namespace, since):
            return None
        return (last[1],)

    def _owner(self, namespace: str, text: str, generation: Generation | None) -> str | None:
        """The owner (comment) of the table the JSON listing `text` shows, read at `generation`
        (None: unknown). Never changed in place (nft cannot alter a table's comment; a new
        table has a new handle), it is known without a text listing when the table is the one
        whose owner was read before, or the one our own apply() committed last."""
        match = _TABLE_HANDLE.search(text) if generation is not None else None
        if generation is not None and match is not None:
            handle = int(match.group(1))
            with self._parsed_lock:
                known = self._owners.get(namespace)
                committed = self._committed.get(namespace)
            if known is not None and known[:2] == (generation.context, handle):
                return known[2]
            if committed == generation:
                # No commit since ours: the table listed is the one apply() wrote.
                self._remember_owner(namespace, generation, handle, self.owner)
                return self.owner
        if self._tracked is not None:
            before, after, listed = self._tracked.run_tracked(namespace, LIST_COMMAND)
            owner = owner_from_comment(table_comment(listed or ""))
            # Both listings saw one state (the same generation throughout): the handle is
            # this comment's.
            if generation is not None and match is not None and before == after == generation:
                self._remember_owner(namespace, generation, int(match.group(1)), owner)
            return owner
        return owner_from_comment(table_comment(self.runner.run(namespace, LIST_COMMAND)))

    def _remember_owner(
        self, namespace: str, generation: Generation, handle: int, owner: str | None
    ) -> None:
        with self._parsed_lock:
            self._owners[namespace] = (generation.context, handle, owner)

    def _forget(self, namespace: str) -> None:
        with self._parsed_lock:
            self._parsed.pop(namespace, None)
            self._sets.pop(namespace, None)
            self._listed.pop(namespace, None)
            self._committed.pop(namespace, None)
            self._owners.pop(namespace, None)

    def desired(self, assignments: Sequence[Assignment]) -> KernelTable:
        """What `read()` returns after `apply(assignments)`: `desired_table(assignments, owner)`."""
        return desired_table(assignments, self.owner)

    def desired_after(
        self, previous: object, assignments: Sequence[Assignment], added: Sequence[Assignment]
    ) -> KernelTable:
        """desired(assignments), given `previous`, a desired table of this backend, and that
        `assignments` are its assignments with some removed and `added` inserted in order
        (sorted, unique keys): only `added` is checked, the rest was when `previous` was made.
        Anything else is rebuilt by desired()."""
        if (
            not isinstance(previous, KernelTable)
            or previous.garbage
            or previous.owner != self.owner
        ):
            return self.desired(assignments)
        desired_table(added, self.owner)  # raises UnsafeValue for what render would refuse
        kinds = {(a.helper, a.protocol) for a in assignments}
        helpers = frozenset(h for h in previous.helpers if (h.type, h.protocol) in kinds)
        if len(helpers) != len(kinds):  # a kind that was not there before: built as desired()
            return self.desired(assignments)
        return KernelTable(tuple(assignments), helpers, (), self.owner)

    def apply(self, namespace: str, assignments: Sequence[Assignment]) -> None:
        """Replaces cthm's table with exactly `assignments`, in one transaction; afterwards
        `read(namespace) == self.desired(assignments)`, marked with this backend's owner.
        Nothing else in the namespace changes."""
        # render() raises UnsafeValue before anything runs.
        self._apply_text(namespace, str(render(assignments, self.owner)))

    def _apply_text(self, namespace: str, text: str) -> None:
        """apply() of the rendered transaction `text`."""
        if self._tracked is None:
            self.runner.run(namespace, text)
            return
        with self._parsed_lock:
            self._committed.pop(namespace, None)
        before, after, _ = self._tracked.run_tracked(namespace, text)
        if (
            before is not None
            and after is not None
            and after.context == before.context
            and after.id == (before.id + 1) & 0xFFFFFFFF
        ):
            with self._parsed_lock:  # our commit was the only one (see _owner)
                self._committed[namespace] = after

    def sync(
        self, namespace: str, assignments: Sequence[Assignment], want: object
    ) -> tuple[KernelTable | None, KernelTable | None]:
        """FULL sync: read(); unless that equals `want` (the caller's desired(assignments)),
        apply(assignments) and read() the whole table back. (before, after): `after` is None
        when nothing was applied (`before == want`), else the read-back, to be compared with
        `want`. Exactly those calls, so the same errors; with a runner that batches (the
        libnftables one), all in one hand-off to its thread, and none when the namespace's
        generation says its table is still the one last read and wanted (a no-op resync)."""
        known = self._last_if_unchanged(namespace)
        if known is not None and known[0] == want:
            return known[0], None
        if self._processes is not None:
            pinned = self._instance(namespace)
            before, after, seen = self._processes.sync(
                namespace, assignments, want, lambda: self._sync_here(namespace, assignments, want)
            )
            if seen is not None:
                self._adopt(namespace, after if after is not None else before, pinned, seen)
            return before, after
        return self._sync_here(namespace, assignments, want)

    def listed_at(self, namespace: str) -> tuple[int, int, int] | None:
        """(st_dev, st_ino, generation id) of the namespace instance and ruleset generation
        this backend's last listing of it was taken at, when known (a kernel worker tells the
        agent, which adopts the listing: `_adopt`)."""
        with self._parsed_lock:
            generation = self._listed.get(namespace)
        pinned = self._instance(namespace)
        if generation is None or pinned is None or pinned[2] != generation.context:
            return None
        return (pinned[0], pinned[1], generation.id)

    def _instance(self, namespace: str) -> tuple[int, int, int] | None:
        instance = getattr(self.runner, "instance", None)
        found = instance(namespace) if callable(instance) else None
        return found if isinstance(found, tuple) else None

    def _adopt(
        self,
        namespace: str,
        table: KernelTable | None,
        pinned: tuple[int, int, int] | None,
        seen: tuple[int, int, int],
    ) -> None:
        """Takes a kernel worker's last listing of the namespace as this backend's own, so a
        no-op resync is answered here by the generation alone (no call to the worker): only
        when this process's runner pinned that very namespace instance since before the worker
        was asked (its context's kept socket: `pinned`, whose serial names it). The listing is
        kept AT the generation the worker listed at, as this runner's context would read it
        (serial, id): a read answers from it only while the namespace is still there, so a
        commit since the worker's listing (or a context made anew here) lists again, as the
        generation read here again before adopting would have told (one netlink round trip a
        router of a resync saved). Without a context here, one is made in the background for
        next time."""
        if pinned is None:
            watch = getattr(self.runner, "watch", None)
            if callable(watch) and self._generations is not None:
                watch(namespace)
            return
        if table is None or (pinned[0], pinned[1]) != seen[:2] or self._generations is None:
            return
        with self._parsed_lock:
            # No listing text: the next listing of it is parsed afresh.
            self._parsed[namespace] = ("", table)
            self._listed[namespace] = Generation(pinned[2], seen[2])
            self._committed.pop(namespace, None)

    def expect_full_syncs(self, count: int) -> None:
        """`count` full syncs are coming at once (the agent's resync): kernel-worker processes,
        if any, start now rather than at the first syncs that overlap."""
        if self._processes is not None:
            self._processes.expect(count)

    def _sync_here(
        self, namespace: str, assignments: Sequence[Assignment], want: object
    ) -> tuple[KernelTable | None, KernelTable | None]:
        """sync() in this process."""
        # Rendered here, on the caller's thread, as the read-back is parsed here below: the
        # runner's thread, every sync's serial path, does only the kernel work, and its next
        # namespace's nft runs (without the GIL) while this thread does the Python.
        text = str(render(assignments, self.owner))  # raises UnsafeValue before anything runs
        # The read-back's text listing, when equal to this, is the desired table (listing.py).
        expected: list[str | None] = []

        def job() -> tuple[KernelTable | None, KernelTable | _Listing | _Shown | None]:
            before = self._read(namespace, ask_first=False, probe=True)
            if before == want:
                return before, None
            self._apply_text(namespace, text if before is not None else into_absent_table(text))
            # (Made only now: most full syncs of a resync apply nothing.)
            expected.append(
                expected_listing(want)
                if isinstance(want, KernelTable) and self._text_misses < _TEXT_MISSES
                else None
            )
            if expected[0] is not None:
                shown = self._list_text(namespace)
                if shown is not None and shown.text == expected[0]:
                    return before, shown
            return before, self._read(namespace, ask_first=False, raw=True)  # (our commit)

        # One visit of the namespace: entered once for the three calls (LibNftablesRunner).
        before, after = job() if self._batcher is None else self._batcher.batch(job, namespace)
        if isinstance(after, _Shown):
            assert isinstance(want, KernelTable)  # (expected was made of it)
            self._text_misses = 0
            with self._parsed_lock:
                # No JSON text: the next listing of it is parsed afresh (as _adopt's).
                self._parsed[namespace] = ("", want)
                if after.generation is not None:
                    self._listed[namespace] = after.generation
                else:
                    self._listed.pop(namespace, None)
            return before, want
        if isinstance(after, _Listing):
            after = self._finish(namespace, after)
            if expected and expected[0] is not None and after == want:
                # The kernel holds the desired table, yet nft did not list it as expected:
                # not this nft's layout. A few in a row and the JSON listing is read at once.
                # (A count shared by the callers' threads: a race only miscounts it.)
                self._text_misses += 1
                if self._text_misses == _TEXT_MISSES:
                    log.info("nft lists tables unlike listing.py expects: reading JSON only")
        return before, after

    def _list_text(self, namespace: str) -> _Shown | None:
        """The text listing of cthm's table and the generation it was listed at; None when
        there is none."""
        try:
            if self._tracked is not None:
                before, after, listed = self._tracked.run_tracked(namespace, LIST_COMMAND)
                return _Shown(listed or "", before if before == after else None)
            return _Shown(self.runner.run(namespace, LIST_COMMAND), None)
        except NftNotFound:
            return None  # (the JSON read then says so too)

    def update(
        self, namespace: str, verified: object, assignments: Sequence[Assignment]
    ) -> KernelTable | None:
        """PARTIAL sync: makes the table hold `assignments` by adding and deleting set elements,
        given `verified`, the table last verified in this namespace (by read() or update()).

        Returns None, writing nothing, when that cannot express the change (a set, and so a
        helper object or chain, would appear or go; `verified` is not clean, not this backend's,
        or of the previous layout): the caller then does a full sync. Otherwise runs one
        transaction (none when nothing changes), reads back only the sets it touched, and
        returns `verified` with those sets' assignments replaced by what the kernel holds, to
        be compared with `desired(assignments)`. Raises NftError when nft refuses (e.g. a port
        deleted by hand: ENOENT); being one transaction, the kernel is then unchanged.
        """
        # `object`: the agent's port types it as its KernelState; only a KernelTable (this
        # backend's own read-back) can be updated.
        if not isinstance(verified, KernelTable) or not verified.clean:
            return None
        if verified.owner != self.owner:
            return None
        before = self._verified_sets(namespace, verified)
        after = _port_sets(assignments)
        if before.keys() != after.keys():
            return None
        touched = sorted(
            (key for key, ports in after.items() if ports != before[key]), key=_set_order
        )
        if not touched:
            return verified
        tx = Transaction()  # deletes, then adds, in set name order: deterministic text
        for key in touched:
            if before[key] - after[key]:
                tx.delete_elements(key[0], helper_object_name(*key[1:]), before[key] - after[key])
        for key in touched:
            if after[key] - before[key]:
                tx.add_elements(key[0], helper_object_name(*key[1:]), after[key] - before[key])
        text = str(tx)  # raises UnsafeValue before anything runs
        names = [set_name(key[0], helper_object_name(*key[1:])) for key in touched]
        if self._set_reader is not None:
            # The commit and the read-back of its sets by netlink in one call (setread.py).
            read_back = self._set_reader.run_and_read_sets(namespace, text, TABLE_NAME, names)
        else:
            self.runner.run(namespace, text)
            read_back = [None] * len(names)
        sets = dict(before)
        garbage = list(verified.garbage)
        gone: list[tuple[Protocol, int, Direction]] = []
        new: list[Assignment] = []
        for key, name, ports in zip(touched, names, read_back, strict=True):
            direction, helper_type, protocol = key
            listed: tuple[int, ...]
            problems: tuple[str, ...] = ()  # a set the netlink reader read: nothing odd in it
            if ports is not None:
                listed = ports
            else:
                listed, problems = self._list_set(namespace, name)
            garbage.extend(problems)
            read = set(listed)
            gone.extend((protocol, port, direction) for port in before[key] - read)
            new.extend(
                Assignment(protocol, port, helper_type, direction) for port in read - before[key]
            )
            sets[key] = read
        # `verified.assignments` is sorted with unique keys and few ports change: edit a copy
        # in place (all removals first, so a port moving between sets is never mistaken for
        # its new self) rather than rebuild and sort a thousand assignments.
        result = list(verified.assignments)
        for sort_key in gone:
            del result[bisect_left(result, sort_key, key=_sort_key)]
        for assignment in new:
            result.insert(bisect_left(result, _sort_key(assignment), key=_sort_key), assignment)
        table = KernelTable(tuple(result), verified.helpers, tuple(garbage), verified.owner)
        with self._parsed_lock:
            self._sets[namespace] = (table, sets)
        return table

    def _list_set(self, namespace: str, name: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """The ports of cthm's set `name` as nft lists it now, and what in it cthm would not
        have written (parse_set's answer)."""
        text = self.runner.run(namespace, LIST_SET_COMMAND.format(name=name), json=True)
        return parse_set(text, name)

    def _verified_sets(self, namespace: str, verified: KernelTable) -> dict[SetKey, set[int]]:
        """`verified`'s assignments by set: kept from the last update() of the namespace when
        `verified` is what it returned (the usual case), so a partial sync of a router holding
        a thousand bindings does not regroup them."""
        with self._parsed_lock:
            last = self._sets.get(namespace)
        if last is not None and last[0] is verified:
            return last[1]  # never mutated: update() replaces a changed set whole
        return _port_sets(verified.assignments)

    def delete(self, namespace: str) -> bool:
        """Deletes cthm's table; True if there was one."""
        self._forget(namespace)  # bounded by the namespaces that hold a table of ours
        try:
            self.runner.run(namespace, str(render_delete()))
        except NftNotFound:
            return False
        return True

    def available_helpers(
        self, namespace: str, kinds: Iterable[tuple[str, Protocol]]
    ) -> dict[tuple[str, Protocol], bool]:
        """Whether this kernel has each (helper type, protocol), by dry runs: changes nothing.

        One dry run for all kinds; only if the kernel refuses it, one per kind to find which.
        """
        wanted = sorted(set(kinds))
        if not wanted:
            return {}
        if self._probe(namespace, wanted):
            return dict.fromkeys(wanted, True)
        return {kind: self._probe(namespace, [kind]) for kind in wanted}

    def _probe(self, namespace: str, kinds: list[tuple[str, Protocol]]) -> bool:
        text = str(render_probe(kinds))
        try:
            self.runner.run(namespace, text, dry_run=True)
        except NftNotFound:
            return False
        return True

    def close(self) -> None:
        if self._processes is not None:
            self._processes.close()
        self.runner.close()
