"""The agent: worker threads draining the work queue, a periodic full resync, and a watch for
namespaces that routers are waiting on.

At start (and only then) it removes orphaned tables: cthm's table (or chains) in namespaces
under /run/netns that no router (and no pending tombstone) of this database claims and that
carry this database's deployment identity (`cthm:<id>`, see netfilter.model). State of another
deployment sharing the host, or unmarked state (from a cthm before identities), is reported and
never deleted. Deleting a router while the agent runs goes through its tombstone instead.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from cthm import metrics
from cthm.agent.capabilities import HelperCapabilities
from cthm.agent.claims import NamespaceClaims, kernel_namespace
from cthm.agent.gcpolicy import tune_gc
from cthm.agent.kernel_state import KernelStateBook
from cthm.agent.ports import (
    DesiredRouter,
    DesiredStateSource,
    InvalidDesiredState,
    KernelBackend,
)
from cthm.agent.queue import ShutDown, WorkQueue
from cthm.agent.reconciler import Action, RawTableReader, Reconciler, ReconcileResult
from cthm.agent.usage import UsageRefresher
from cthm.domain import (
    AgentSnapshot,
    HelperCatalog,
    HelperUsageCounts,
    RouterKernelState,
    Unavailable,
)
from cthm.netfilter import NETNS_DIR, NftError, UnsafeValue, read_usage, scratch_namespace

log = logging.getLogger(__name__)

COUNTED = ("applied", "noop", "failed", "removed", "drift")


@runtime_checkable
class HoldsReports(Protocol):
    """A source whose reports can wait and be written together (LocalStoreSource); the
    agent never imports the store."""

    def hold_reports(self) -> None: ...

    def flush_reports(self) -> dict[str, Exception]: ...

    def held_rows(self) -> int: ...


# Routers a worker reconciles in a row before their status reports are committed together, and
# the rows (routers and bindings) after which it commits earlier: a cold sync of 100 routers x
# 1000 held 50,000 rows a worker and wrote them at the very end (~0.25 s each, one after the
# other), where smaller commits overlap the other worker's kernel work.
REPORT_RUN = 64
REPORT_ROWS = 4096
UNAVAILABLE_LOG_INTERVAL = 60.0  # seconds between warnings while the database is unavailable


class Agent:
    def __init__(
        self,
        source: DesiredStateSource,
        backend: KernelBackend,
        catalog: HelperCatalog,
        *,
        workers: int = 2,
        resync_interval: float = 60.0,
        namespace_poll_interval: float = 0.25,
        netns_dir: Path = NETNS_DIR,
        probe_at_start: bool = False,
        sweep_orphans: bool = True,
        orphan_scope: Callable[[str], bool] | None = None,
        retired_backends: Sequence[KernelBackend] = (),
        raw_tables: RawTableReader | None = None,
    ) -> None:
        """sweep_orphans: remove orphaned cthm tables at start(); orphan_scope: which namespace
        names the sweep may look at (default: all of them; tests narrow it to their own).
        raw_tables: reads a namespace's iptables raw tables (netfilter.read_raw_tables), so
        each resync finds the bindings other `-j CT` rules shadow; None: not looked for."""
        self._source = source
        self._backend = backend
        self.capabilities = HelperCapabilities(backend)
        self.book = KernelStateBook()
        self.telemetry = metrics.AgentTelemetry(_label(backend))  # Prometheus, and /readyz
        # The usage metrics' last read (agent/usage.py), refreshed after each periodic resync.
        self.usage = UsageRefresher(
            self.book, lambda namespace: read_usage(namespace, netns_dir=netns_dir)
        )
        self._usage_due = threading.Event()
        self.reconciler = Reconciler(
            source,
            backend,
            catalog,
            self.capabilities,
            self.book,
            retired=retired_backends,
            raw_tables=raw_tables,
            claims=NamespaceClaims(netns_dir),
        )
        self._sweep_orphans = sweep_orphans
        self._orphan_scope = orphan_scope
        self.queue = WorkQueue()
        self._workers = workers
        self._resync_interval = resync_interval
        self._poll_interval = namespace_poll_interval
        self._netns_dir = netns_dir
        self._probe_at_start = probe_at_start
        self._catalog = catalog
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loops: list[threading.Thread] = []  # workers and timer: must run while started
        self._started_at: datetime | None = None
        self._resynced: tuple[datetime, float] | None = None  # (wall clock, monotonic)
        self._reconciled_at: datetime | None = None
        self._lock = threading.Lock()
        self._waiting_for_namespace: dict[str, str] = {}  # router id -> namespace
        self._last: dict[str, ReconcileResult] = {}
        self.counts: Counter[str] = Counter()
        self._unclaimed: dict[str, str | None] = {}  # the sweep's finds it did not delete
        self._unavailable_logged_at: float | None = None
        # Set during start(): (announce sequence, every router's desired state) read once.
        self._at_start: tuple[int, dict[str, DesiredRouter | InvalidDesiredState]] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("agent already started")
        tune_gc()  # before the first read of every router (agent/gcpolicy.py: why)
        # The start-up passes and the first resync share one read of every router.
        sequence = self.reconciler.sequence()
        try:
            self._at_start = (sequence, self._source.load_all())
        except Unavailable:  # each pass reads (and reports) for itself
            self._at_start = None
        try:
            if self._sweep_orphans:
                # Before any worker runs: no apply can race with the deletions.
                try:
                    self.remove_orphans()
                except Exception:  # cleanup must never keep the agent from starting
                    log.exception("could not remove orphaned tables")
            self._note_namespaces()
            self._started_at = datetime.now(UTC)
            self._loops = [
                self._spawn(self._work_loop, f"cthm-agent-worker-{index}")
                for index in range(self._workers)
            ]
            self._loops.append(self._spawn(self._timer_loop, "cthm-agent-timer"))
            self._spawn(self._usage_loop, "cthm-agent-usage")
            if self._probe_at_start:
                self._spawn(self._probe_catalog, "cthm-agent-probe")
            self.resync()
        finally:
            self._at_start = None

    def stop(self, timeout: float = 10.0) -> bool:
        """Stops taking work and lets in-flight reconciles finish; True if all threads ended."""
        self._stop.set()
        self._usage_due.set()  # wakes the usage thread to see the stop
        self.queue.shutdown()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.error("agent threads still running after %.1fs: %s", timeout, alive)
        self._threads.clear()
        self._loops = []
        return not alive

    # --- work ----------------------------------------------------------------------------

    def enqueue(self, router_ids: Iterable[str]) -> None:
        """These routers changed (or must be looked at again): reconciled soon."""
        ids = list(router_ids)
        self.reconciler.announce(ids)  # desired state a resync preloaded is stale for them
        self._queue(ids)

    def _queue(self, router_ids: Iterable[str]) -> None:
        for router_id in router_ids:
            self.telemetry.queued(router_id)
            self.queue.add(router_id)

    def resync_routers(self, router_ids: Iterable[str]) -> None:
        """These routers go through a full reconcile soon (`cthm router resync`): the whole
        table read and compared, the raw tables read again for shadowing rules."""
        ids = list(router_ids)
        self.reconciler.book.need_full(ids)
        self.reconciler.check_shadows(ids)
        self._queue(ids)

    def resync_router(self, router_id: str) -> None:
        """resync_routers for one router (domain.ResyncRequester, for the API)."""
        self.resync_routers([router_id])

    def resync(self) -> None:
        """Every router and every tombstone goes through a full reconcile (catches missed
        events and drift), reading its namespace's raw tables again for shadowing rules; the
        desired state of all routers is read at once."""
        # Read whole before any router is queued, not streamed to the workers while read: tried,
        # and 100 routers x 1000 took ~15% longer (the reading thread held the GIL the workers
        # and the libnftables thread wait for; the work here is Python, not I/O).
        self._queue(self._full_sync_due())
        with self._lock:
            self._resynced = (datetime.now(UTC), time.monotonic())

    def sync_all(self) -> list[ReconcileResult]:
        """A full reconcile of every router now, in this thread (used by tests, benchmarks and
        tools); the desired state of all routers read at once."""
        return [self._reconcile(router_id) for router_id in self._full_sync_due()]

    def _full_sync_due(self) -> list[str]:
        """Marks every router and tombstone full-due, with its desired state preloaded."""
        if self._at_start is not None:
            sequence, states = self._at_start
        else:
            sequence = self.reconciler.sequence()
            states = self._source.load_all()
        ids = sorted(set(states) | set(self._source.tombstones()))
        # A backend that shares bursts of full syncs with other processes starts them now,
        # while the routers are queued (NftablesBackend with SyncProcesses).
        expect = getattr(self._backend, "expect_full_syncs", None)
        if callable(expect):
            expect(len(ids))
        self.reconciler.book.need_full(ids)
        self.reconciler.check_shadows(ids)
        self.reconciler.preload(states, sequence)
        return ids

    def wait_settled(self, timeout: float = 10.0) -> bool:
        """True once nothing is ready or in flight (delayed retries may remain)."""
        return self.queue.wait_until(lambda: not self.queue.busy(), timeout)

    def snapshot(self) -> AgentSnapshot:
        """Counts, queue depth, thread health and the last resync and reconcile times."""
        with self._lock:
            counts = {name: self.counts[name] for name in COUNTED}
            routers = sum(1 for r in self._last.values() if r.action is not Action.REMOVED)
            resynced = self._resynced
            reconciled_at = self._reconciled_at
        loops = self._loops
        return AgentSnapshot(
            started_at=self._started_at,
            last_resync_at=resynced[0] if resynced else None,
            last_reconcile_at=reconciled_at,
            seconds_since_resync=time.monotonic() - resynced[1] if resynced else None,
            threads_alive=bool(loops)
            and not self._stop.is_set()
            and all(t.is_alive() for t in loops),
            counts=counts,
            queue_depth=len(self.queue),
            routers=routers,
            workers=self._workers,
            resync_interval=self._resync_interval,
            deployment_id=self._backend.owner,
            unclaimed=self.unclaimed,
            oldest_queued_seconds=self.telemetry.oldest_pending(),
        )

    def kernel_state(self, router_id: str) -> RouterKernelState | None:
        """What this agent last saw in the router's kernel table; None if it has not looked."""
        return self.book.get(router_id)

    def helper_usage(self, namespace: str) -> tuple[HelperUsageCounts | None, str | None]:
        """The helpers' live connections and expectations in `namespace`, read now (bounded
        by conntrack_usage's timeout); (None, why) when the kernel cannot be read."""
        try:
            return read_usage(namespace, netns_dir=self._netns_dir).of, None
        except NftError as exc:
            return None, str(exc)[:1000]

    def remove_orphans(self) -> list[str]:
        """Deletes cthm's table (or chains: nothing else) in every namespace under the netns
        directory that no router or pending tombstone claims and that carries THIS deployment's
        identity (the backend's owner); returns those namespaces.

        Anything else of cthm's (another deployment's on a shared host, or unmarked: written by
        a cthm before identities, or by hand) is never deleted: it is logged once as a WARNING
        and kept in `unclaimed` (namespace -> its owner, None if unmarked) for operators.

        Meant for start() only (see the module's docstring). Does nothing if any stored router
        cannot be read: its namespace is unknown, and its table must not be taken for an orphan.
        """
        claimed = set(self._source.tombstones().values())
        for desired in self._desired_states():
            if isinstance(desired, InvalidDesiredState):
                log.warning(
                    "not removing orphaned tables: router %s cannot be read (%s)",
                    desired.router_id,
                    desired.reason,
                )
                return []
            if desired is not None:
                claimed.add(desired.router.namespace)
        try:
            names = sorted(entry.name for entry in self._netns_dir.iterdir())
        except FileNotFoundError:
            return []
        removed = []
        identity = self._backend.owner
        # Another name (a bind mount) of a claimed namespace is no orphan: its table is a router's.
        kernels = {kernel_namespace(name, self._netns_dir) for name in claimed} - {None}
        for name in names:
            if name in claimed or (self._orphan_scope is not None and not self._orphan_scope(name)):
                continue
            if kernel_namespace(name, self._netns_dir) in kernels:
                continue
            try:
                table = self._backend.read(name)
                if table is None:
                    continue
                if identity is None or table.owner != identity:
                    self._unclaimed_found(name, table.owner)
                    continue
                if not self._backend.delete(name):
                    continue
            except (NftError, UnsafeValue, OSError) as exc:
                log.warning(
                    "namespace %s: could not check for an orphaned cthm table: %s", name, exc
                )
                continue
            log.info(
                "removed orphaned cthm %s state from namespace %s (it carries this deployment's "
                "identity %s and no router of it claims the namespace)",
                _label(self._backend),
                name,
                identity,
            )
            removed.append(name)
        return removed

    @property
    def unclaimed(self) -> dict[str, str | None]:
        """cthm state the start-up sweep found and left alone: namespace -> the deployment id it
        carries (another deployment's), or None (unmarked)."""
        with self._lock:
            return dict(self._unclaimed)

    def _unclaimed_found(self, namespace: str, owner: str | None) -> None:
        with self._lock:
            known = self._unclaimed.get(namespace, "") == owner
            self._unclaimed[namespace] = owner
        if known:
            return  # said once
        whose = (
            f"deployment {owner}"
            if owner is not None
            else "no deployment (unmarked: written by a cthm before deployment identities, "
            "or by hand)"
        )
        log.warning(
            "namespace %s holds cthm %s state of %s and no router of this deployment claims it: "
            "left in place (the sweep removes only this deployment's); if it is no one's, "
            "remove it by hand",
            namespace,
            _label(self._backend),
            whose,
        )

    def _note_namespaces(self) -> None:
        """Records every router's kernel namespace before the first reconcile, so which of two
        routers sharing one keeps it does not depend on the order of reconciles (claims.py)."""
        try:
            for desired in self._desired_states():
                try:
                    if isinstance(desired, DesiredRouter):
                        self.reconciler.claims.note(desired.router)
                except (NftError, UnsafeValue):
                    continue  # its reconcile reports it
        except Exception:  # never keeps the agent from starting; reconciles note them too
            log.exception("could not look at the routers' namespaces")

    def _desired_states(self) -> Iterator[DesiredRouter | InvalidDesiredState | None]:
        """Every router's desired state (the refusal, for a router that cannot be read), for
        the start-up passes: in one read (load_all), start()'s own."""
        states = self._at_start[1] if self._at_start is not None else self._source.load_all()
        yield from states.values()

    def _reconcile(self, router_id: str) -> ReconcileResult:
        started = time.monotonic()
        try:
            result = self.reconciler.reconcile(router_id)
        except Unavailable as exc:  # the database, not the router: retried with backoff
            self._log_unavailable(exc)
            result = ReconcileResult(router_id, Action.FAILED, exc.message, retry=True)
        except Exception as exc:  # one bad router must never stop the worker
            log.exception("router %s: reconcile failed", router_id)
            self.reconciler.book.need_full([router_id])  # what it left in the kernel is unknown
            result = ReconcileResult(router_id, Action.FAILED, f"internal error: {exc}", retry=True)
        self.telemetry.synced(result, started)
        if result.requeue:
            self.enqueue(result.requeue)
        with self._lock:
            self._last[router_id] = result
            self._reconciled_at = datetime.now(UTC)
            self.counts[result.action.value] += 1
            if result.drift:
                self.counts["drift"] += 1
            if result.missing_namespace:
                self._waiting_for_namespace[router_id] = result.missing_namespace
            else:
                self._waiting_for_namespace.pop(router_id, None)
        return result

    def _work_loop(self) -> None:
        while True:
            try:
                router_id = self.queue.get()
            except ShutDown:
                return
            if router_id is None:
                continue
            if isinstance(self._source, HoldsReports):
                self._work_run(router_id, self._source)
                continue
            try:
                result = self._reconcile(router_id)
                if result.retry:
                    self.queue.retry(router_id)
                else:
                    self.queue.forget(router_id)
            finally:
                self.queue.done(router_id)

    def _work_run(self, first: str, source: HoldsReports) -> None:
        """`first` and the routers ready after it (up to REPORT_RUN, or REPORT_ROWS rows of
        reports), their status reports written in one transaction (a cold sync paid one
        fsynced commit per router). None is done before that commit: wait_settled still means
        the statuses are in the database, and a router's next reconcile comes after its
        report."""
        results: dict[str, ReconcileResult] = {}
        source.hold_reports()
        try:
            router_id: str | None = first
            while router_id is not None:
                results[router_id] = self._reconcile(router_id)
                if len(results) >= REPORT_RUN or source.held_rows() >= REPORT_ROWS:
                    break
                try:
                    router_id = self.queue.get(timeout=0)
                except ShutDown:
                    break
        finally:
            failed = source.flush_reports()
            for router_id, result in results.items():
                try:
                    error = failed.get(router_id)
                    if error is not None:
                        self._report_failed(router_id, error)
                    if result.retry or error is not None:
                        self.queue.retry(router_id)
                    else:
                        self.queue.forget(router_id)
                finally:
                    self.queue.done(router_id)

    def _report_failed(self, router_id: str, error: Exception) -> None:
        """As a reconcile whose report raised: retried, and reading its stored state afresh (the
        statuses it believes written are not)."""
        if isinstance(error, Unavailable):
            self._log_unavailable(error)
        else:
            log.error("router %s: status report failed: %s", router_id, error)
        self.reconciler.book.need_full([router_id])

    def _timer_loop(self) -> None:
        next_resync = time.monotonic() + self._resync_interval
        while not self._stop.wait(self._poll_interval):
            with self._lock:
                waiting = dict(self._waiting_for_namespace)
            # A namespace that appears is applied at once, not after the next backoff step.
            for router_id, namespace in waiting.items():
                # lexists: never follows a symlink (one to /proc/1/ns/net raises EACCES).
                if os.path.lexists(self._netns_dir / namespace):
                    self.queue.add(router_id)
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + self._resync_interval
                try:
                    self.resync()
                except Unavailable as exc:
                    self._log_unavailable(exc)
                except Exception:
                    log.exception("periodic resync failed")
                # After it has queued its routers. Only the periodic resync reads the usage (not
                # resync() called by a user or a benchmark): conntrack once per interval.
                self._usage_due.set()

    def _usage_loop(self) -> None:
        """After each resync, once its reconciles have had time to run: the next routers'
        helper usage, read for the metrics (never more than one pass at once)."""
        while not self._stop.is_set():
            self._usage_due.wait()
            self._usage_due.clear()
            if self._stop.is_set():  # stop() sets the event too
                return
            # The resync's reconciles first: the usage of a table just written is the one read.
            self.queue.wait_until(
                lambda: self._stop.is_set() or not self.queue.busy(),
                min(30.0, max(1.0, self._resync_interval / 2)),
            )
            if self._stop.is_set():
                return
            try:
                self.usage.refresh(self._stop)
            except Exception:  # the metrics must never take the agent down
                log.exception("reading helper usage failed")

    def _log_unavailable(self, exc: Unavailable) -> None:
        """One warning, then one a minute while it lasts: every router retries with backoff
        and each retry would say the same."""
        now = time.monotonic()
        with self._lock:
            last, self._unavailable_logged_at = self._unavailable_logged_at, now
            if last is not None and now - last < UNAVAILABLE_LOG_INTERVAL:
                self._unavailable_logged_at = last
                return
        log.warning("cannot read or report desired state: %s; retrying", exc.message)

    def _probe_catalog(self) -> None:
        """Learns which catalog helpers this kernel has before any router needs them, so the
        catalog endpoint tells the truth from the start (dry run in a namespace of our own)."""
        kinds = {(spec.name, p) for spec in self._catalog.kernel_helpers for p in spec.protocols}
        try:
            with scratch_namespace() as namespace:
                lacking = self.capabilities.unavailable(namespace, kinds)
        except (NftError, OSError, subprocess.SubprocessError) as exc:  # reconcile probes again
            log.warning("could not probe the kernel's helpers: %s", exc)
            return
        if lacking:
            names = ", ".join(f"{name}/{proto}" for name, proto in sorted(lacking))
            log.warning("this kernel lacks conntrack helpers: %s", names)

    def _spawn(self, target: object, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)
        return thread


def _label(backend: KernelBackend) -> str:
    """`nftables` (table inet cthm) or the iptables flavour's label (chains cthm-*)."""
    label = getattr(backend, "label", None)
    return label if isinstance(label, str) else type(backend).__name__
