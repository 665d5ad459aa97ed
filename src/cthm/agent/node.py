"""A node agent (`cthm agent run`): the agent of one network node, fed by a remote API.

It has no database. In order, start():
1. reads /run/netns (discovery.py) and keeps following it;
2. registers: PUT /v2.0/hosts/{host}/agent with the namespaces found, retried with backoff
   until the API answers (a refused token is final: ApiRefused, the CLI exits 2);
3. builds the kernel backend for the deployment the API names (make_backend), and an Agent over
   RemoteSource (remote.py), which sweeps this deployment's orphaned tables, as the embedded
   agent does, with "claimed" = the routers placed on this host and this host's tombstones;
4. follows the change feed (watch.py) and sends a heartbeat every report_interval, at once
   when the namespaces change: namespaces, configurations, and the kernel summary of every
   router it keeps. The answer lists the routers placed on the host: one that is new, or no
   longer there, or whose revision is not the one last verified is queued. A router no longer
   placed loads as "not found" and has no tombstone here, so the reconciler forgets it and
   deletes nothing: its namespace left this host with the table in it.

While the API cannot be reached nothing is done to the kernel: reconciles fail as Unavailable
and are retried with backoff, the watch and heartbeat retry with capped backoff, and the
watch lists again on reconnect.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cthm.agent.agent import Agent
from cthm.agent.discovery import NamespaceWatcher
from cthm.agent.ports import KernelBackend
from cthm.agent.reconciler import RawTableReader
from cthm.agent.remote import ApiClient, ApiRefused, Backoff, RemoteSource
from cthm.agent.watch import ChangeWatcher
from cthm.domain import AgentSnapshot, HelperCatalog, Unavailable
from cthm.netfilter import NETNS_DIR

log = logging.getLogger(__name__)

LOG_INTERVAL = 60.0  # one warning a minute while the API is unreachable
UNCLAIMED_SHOWN = 100  # namespaces listed in configurations.unclaimed_kernel_state at most
CHOICE_KEYS = (
    "backend",
    "chosen_by",
    "reason",
    "iptables_flavour",
    "iptables_flavour_reason",
    "retired_backends",
)
REQUEST_TOO_LARGE = 413

# deployment id, namespaces -> (backend, retired backends, how it was chosen: CHOICE_KEYS)
MakeBackend = Callable[
    [str, list[str]], tuple[KernelBackend, tuple[KernelBackend, ...], dict[str, Any]]
]


class NodeAgent:
    def __init__(
        self,
        client: ApiClient,
        host: str,
        make_backend: MakeBackend,
        catalog: HelperCatalog,
        *,
        netns_dir: Path = NETNS_DIR,
        report_interval: float = 30.0,
        resync_interval: float = 60.0,
        workers: int = 2,
        raw_tables: RawTableReader | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        """stop_event: setting it makes start() give up waiting for the API (a signal handler
        sets it); stop() sets it too."""
        self._client = client
        self.host = host
        self._make_backend = make_backend
        self._catalog = catalog
        self._netns_dir = netns_dir
        self._report_interval = report_interval
        self._resync_interval = resync_interval
        self._workers = workers
        self._raw_tables = raw_tables
        self._stop = stop_event or threading.Event()
        self._wake = threading.Event()  # the heartbeat: now (namespaces changed, or stop)
        self._lock = threading.Lock()
        self._started = False
        self._started_at: datetime | None = None
        self.deployment_id: str | None = None
        self.agent: Agent | None = None
        self.source: RemoteSource | None = None
        self.discovery: NamespaceWatcher | None = None
        self.watcher: ChangeWatcher | None = None
        self._heartbeat: threading.Thread | None = None
        self._backends: tuple[KernelBackend, ...] = ()
        self._choice: dict[str, Any] = {}
        self._placed: dict[str, int] = {}  # router id -> revision, as the last answer said
        self._kernel_cap: int | None = None  # summaries per heartbeat, after a 413
        self._kernel_offset = 0
        self._warned_at: float | None = None
        self.heartbeats = 0  # answered heartbeats (registration included)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> bool:
        """Registers (waiting for the API as long as it takes), then starts everything.
        False if stop_event was set first; ApiRefused if the API refuses the registration
        (401/403: the token; any other 4xx: the request, e.g. a host name it does not take,
        or a server that runs its own agent)."""
        if self._started:
            raise RuntimeError("node agent already started")
        self._started = True
        self._started_at = datetime.now(UTC)
        try:
            self.discovery = NamespaceWatcher(self._netns_dir, self._namespaces_changed)
            namespaces = self.discovery.start()
            answer = self._register()
            if answer is None:
                return False
            self.deployment_id = str(answer["deployment_id"])
            backend, retired, choice = self._make_backend(self.deployment_id, namespaces)
            self._backends = (backend, *retired)
            self._choice = dict(choice)
            self.source = RemoteSource(self._client, self.host)
            self.agent = Agent(
                self.source,
                backend,
                self._catalog,
                workers=self._workers,
                resync_interval=self._resync_interval,
                netns_dir=self._netns_dir,
                retired_backends=retired,
                raw_tables=self._raw_tables,
            )
            self.source.book = self.agent.book
            self._placement(answer)
            try:
                self.agent.start()
            except Unavailable as exc:  # threads run; the watch's first list queues everything
                log.warning("first resync failed: %s; the watch lists again", exc.message)
            self.watcher = ChangeWatcher(
                self._client,
                self.host,
                self.agent.enqueue,
                self._relist,
                on_resync=self.agent.resync_routers,
            )
            self.watcher.start()
            self._heartbeat = threading.Thread(
                target=self._heartbeat_loop, name="cthm-agent-heartbeat", daemon=True
            )
            self._heartbeat.start()
            self._wake.set()  # the API learns the backend at once, not in report_interval
        except BaseException:
            self.stop()
            raise
        log.info(
            "node agent of host %s started (deployment %s, %d namespaces)",
            self.host,
            self.deployment_id,
            len(namespaces),
        )
        return True

    def stop(self, timeout: float = 10.0) -> bool:
        """Stops following the API and /run/netns, lets in-flight reconciles finish, closes
        the backends and the client. Idempotent; True if every thread ended in time."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        ended = True
        if self.watcher is not None:
            ended &= self.watcher.stop(left())
        if self._heartbeat is not None:
            ended &= self._join(self._heartbeat, deadline)
            self._heartbeat = None
        if self.discovery is not None:
            ended &= self.discovery.stop(left())
        if self.agent is not None:
            ended &= self.agent.stop(left())
        backends, self._backends = self._backends, ()
        for backend in backends:
            try:
                backend.close()
            except Exception:
                log.exception("closing the %s backend failed", backend.label)
        self._client.close()
        return ended

    def snapshot(self) -> AgentSnapshot | None:
        """The agent's own snapshot; None before registration."""
        return self.agent.snapshot() if self.agent is not None else None

    def configurations(self) -> dict[str, Any]:
        """What the heartbeat reports as the agent's configurations."""
        namespaces = self.discovery.namespaces if self.discovery is not None else []
        watch = (
            self.watcher.counters()
            if self.watcher is not None
            else {"revision": None, "connected": False, "events": 0, "relists": 0}
        )
        conf: dict[str, Any] = {key: self._choice.get(key) for key in CHOICE_KEYS}
        conf["retired_backends"] = list(self._choice.get("retired_backends") or ())
        conf.update(
            report_interval=self._report_interval,
            resync_interval=self._resync_interval,
            namespaces=len(namespaces),
            watch=watch,
        )
        snapshot = self.snapshot()
        if snapshot is not None:
            unclaimed = sorted(snapshot.unclaimed.items())[:UNCLAIMED_SHOWN]
            conf.update(
                routers=snapshot.routers,
                counts=dict(snapshot.counts),
                queue_depth=snapshot.queue_depth,
                deployment_id=snapshot.deployment_id,
                threads_alive=snapshot.threads_alive,
                unclaimed_kernel_state={ns: owner or "unmarked" for ns, owner in unclaimed},
            )
        return conf

    @property
    def placed(self) -> dict[str, int]:
        """Routers placed on this host (id -> revision) as the API last answered."""
        with self._lock:
            return dict(self._placed)

    # --- registration and heartbeat ----------------------------------------------------------

    def _register(self) -> Mapping[str, Any] | None:
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                answer = self._report()
            except Unavailable as exc:
                delay = backoff.next()
                self._warn(f"cannot register with the API: {exc.message}; retrying in {delay:.1f}s")
                self._stop.wait(delay)
                continue
            if not isinstance(answer.get("deployment_id"), str):
                raise ApiRefused(200, "the API's answer names no deployment_id (not a cthm API?)")
            log.info("registered host %s with the API at %s", self.host, self._client.url)
            self._warned_at = None
            return answer
        return None

    def _heartbeat_loop(self) -> None:
        backoff = Backoff(high=max(0.2, min(30.0, self._report_interval)))
        due = time.monotonic() + self._report_interval
        while True:
            self._wake.wait(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                answer = self._report()
                self._placement(answer)
            except (Unavailable, ApiRefused) as exc:
                delay = backoff.next()
                why = exc.message if isinstance(exc, Unavailable) else str(exc)
                self._warn(f"heartbeat failed: {why}; retrying in {delay:.1f}s")
                due = time.monotonic() + min(delay, self._report_interval)
                continue
            except Exception:  # the heartbeat must outlive any surprise
                log.exception("heartbeat failed")
                due = time.monotonic() + self._report_interval
                continue
            if self._warned_at is not None:
                log.info("heartbeat: the API answers again")
                self._warned_at = None
            backoff.reset()
            due = time.monotonic() + self._report_interval

    def _report(self) -> Mapping[str, Any]:
        """One PUT of the agent's report; a 413 makes it send fewer kernel summaries at a time
        (taken in turn, so every router's is refreshed over a few heartbeats)."""
        for _ in range(8):  # halving from 10000 summaries reaches one within 14: bounded
            body = {
                "started_at": _timestamp(self._started_at),
                "namespaces": self.discovery.namespaces if self.discovery is not None else [],
                "configurations": self.configurations(),
                "kernel": self._kernel(),
            }
            try:
                answer = self._client.put_agent(self.host, body)
            except ApiRefused as exc:
                if exc.status != REQUEST_TOO_LARGE or not body["kernel"]:
                    raise
                self._kernel_cap = len(body["kernel"]) // 2
                log.warning(
                    "the API refused a heartbeat as too large: %d kernel summaries at a time",
                    self._kernel_cap,
                )
                continue
            self.heartbeats += 1
            return answer
        raise Unavailable("the API refuses the heartbeat as too large")

    def _kernel(self) -> list[dict[str, Any]]:
        summaries = self.agent.book.summaries() if self.agent is not None else []
        cap = self._kernel_cap
        if cap is None or len(summaries) <= cap:
            return summaries
        start = self._kernel_offset % len(summaries)
        self._kernel_offset = start + cap
        return (summaries + summaries)[start : start + cap]

    def _placement(self, answer: Mapping[str, Any]) -> None:
        """Queues the routers placed on this host anew, no longer placed, or at a revision
        other than the one last verified here. Also: whether the API takes the helper usage
        in kernel summaries (an older one refuses the fields)."""
        if self.agent is not None:
            self.agent.book.share_usage = answer.get("kernel_usage") is True
        try:
            placed = {str(r["id"]): int(r["revision_number"]) for r in answer["routers"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"unexpected heartbeat answer from the API: {exc!r:.200}") from exc
        with self._lock:
            before, self._placed = self._placed, placed
        agent = self.agent
        if agent is None:
            return
        changed = set(placed) ^ set(before)
        for router_id, revision in placed.items():
            seen = agent.book.get(router_id)
            if seen is not None and seen.revision_number not in (None, revision):
                changed.add(router_id)
        if changed:
            log.debug("placement: queueing %s", ", ".join(sorted(changed)))
            agent.enqueue(sorted(changed))

    def _namespaces_changed(self, names: Sequence[str]) -> None:
        self._wake.set()

    def _relist(self) -> None:
        """After every (re)list of the watch: every router and tombstone is reconciled."""
        if self.agent is not None:
            self.agent.resync()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if self._warned_at is not None and now - self._warned_at < LOG_INTERVAL:
                return
            self._warned_at = now
        log.warning("%s (kernel left as it is)", message)

    def _join(self, thread: threading.Thread, deadline: float) -> bool:
        while thread.is_alive() and time.monotonic() < deadline:
            self._client.interrupt(thread)  # a request in flight ends at once
            thread.join(0.05)
        if thread.is_alive():
            log.error("thread %s still running at stop", thread.name)
            return False
        return True


def _timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
