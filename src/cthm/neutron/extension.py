"""`cthm_conntrack_helper`: Neutron's L3 agent extension interface over cthm's agent.

Neutron's L3 agent calls it exactly as it calls its own `conntrack_helper` extension; only the
kernel side differs. Neutron's helpers become cthm bindings (ingress) of a router whose
namespace is the router's (`snat-` for a distributed router on a dvr_snat agent); cthm's agent
(queue, workers, periodic resync, the reconciler's verified one-transaction writes) does the
rest. Every call that changes a router reconciles it before returning, in the caller's thread
(serialized per router with the agent's own workers), so when add_router returns the router's
helpers are in the kernel and verified, or the failure is logged and the router retried.

After every reconcile the router's state goes to `<state_path>/<router_id>.json`
(`cthm status --neutron`); once a router's rules are verified, Neutron's own helper chains for
the helpers cthm manages are removed from its namespace (migration.py).
"""

from __future__ import annotations

import atexit
import logging
import math
import re
import socket
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neutron.api.rpc.callbacks import events, resources
from neutron.api.rpc.callbacks.consumer import registry
from neutron.api.rpc.handlers import resources_rpc
from neutron_lib import rpc as n_rpc
from neutron_lib.agent import l3_extension
from oslo_config import cfg

from cthm.agent import Agent, DesiredStateSource, KernelBackend, ReconcileResult
from cthm.domain import HelperCatalog, InvalidInput, Status
from cthm.netfilter import (
    IptablesBackend,
    NamespaceNotFound,
    NftablesBackend,
    NftError,
    NftRunner,
    UnsafeValue,
    make_usable_runner,
)
from cthm.neutron import config
from cthm.neutron.migration import NeutronRules
from cthm.neutron.source import NeutronSource, make_router
from cthm.neutron.state_file import remove_state, write_state
from cthm.neutron.takeover import Takeover

log = logging.getLogger(__name__)

OWNER_PREFIX = "neutron-"
_UNSAFE_OWNER = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class _Migrated:
    """A router's migration so far: the helper ids it was done for, and whether no Neutron
    chain was left in its namespace."""

    managed: frozenset[str]
    clean: bool


class NeutronAgent(Agent):
    """cthm's agent with reconciles a caller can run now, serialized per router with the
    workers' (the work queue serializes only its own), and a hook after each one."""

    def __init__(self, *args: Any, after: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._after = after
        self._router_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._router_locks_lock = threading.Lock()

    def reconcile_now(self, router_ids: Iterable[str]) -> list[ReconcileResult]:
        """Each router reconciled once, in this thread; a retryable failure goes to the queue
        with backoff (a missing namespace is also watched for)."""
        ids = list(dict.fromkeys(router_ids))
        self.reconciler.announce(ids)  # a resync's preloaded desired state is stale for them
        results = []
        for router_id in ids:
            result = self._reconcile(router_id)
            if result.retry:
                self.queue.retry(router_id)
            else:
                self.queue.forget(router_id)
            if result.requeue:
                self.enqueue(result.requeue)
            results.append(result)
        return results

    def router_lock(self, router_id: str) -> threading.Lock:
        """The lock every reconcile of the router holds."""
        with self._router_locks_lock:
            return self._router_locks[router_id]

    def _reconcile(self, router_id: str) -> ReconcileResult:
        with self.router_lock(router_id):
            result = super()._reconcile(router_id)
            self._after(router_id, result)
        return result


def owner_for(host: str) -> str:
    """The deployment id cthm marks this agent's kernel state with: `neutron-<host>`."""
    owner = OWNER_PREFIX + _UNSAFE_OWNER.sub("-", host)
    return owner[:64]


def build_backend(kind: str, owner: str) -> tuple[KernelBackend, NftRunner | None]:
    """The backend of `[cthm] backend`, and the nftables runner (also for the migration's
    cheap look at a namespace; None if nftables cannot be used and is not needed)."""
    if kind == "nftables":
        runner = make_usable_runner("auto")
        return NftablesBackend(runner, owner=owner), runner
    probe: NftRunner | None
    try:
        probe = make_usable_runner("auto")
    except OSError:
        probe = None
    return IptablesBackend("auto", flavour="default", owner=owner), probe


class CthmConntrackHelperExtension(l3_extension.L3AgentExtension):  # type: ignore[misc]
    SUPPORTED_RESOURCE_TYPES = [resources.CONNTRACKHELPER]

    agent_api: Any = None
    _agent: NeutronAgent | None = None

    # --- Neutron's interface ----------------------------------------------------------

    def initialize(self, connection: Any, driver_type: Any) -> None:
        conf = cfg.CONF
        config.register_opts(conf)
        options = conf[config.GROUP]
        self._host = _host(conf)
        self._state_path = Path(options.state_path)
        self._remove_neutron_rules = bool(options.remove_neutron_rules)
        self._closed = False
        self._stopping = threading.Event()
        self._grace_thread: threading.Thread | None = None
        self._migrated: dict[str, _Migrated] = {}
        catalog = HelperCatalog()
        self._source = NeutronSource(catalog)
        self._backend, self._nft = build_backend(options.backend, owner_for(self._host))
        self._neutron_rules = NeutronRules(self._nft if options.backend == "nftables" else None)
        # Before any router is processed (the L3 agent initializes its extensions first): the
        # router's first process() drops Neutron's chains before its add_router reaches us.
        self._takeover = Takeover(self._backend, catalog, self._neutron_rules)
        self._takeover.run(options.takeover_namespaces)
        interval = options.resync_interval
        source: DesiredStateSource = self._source
        self._agent = NeutronAgent(
            source,
            self._backend,
            catalog,
            resync_interval=interval if interval > 0 else math.inf,
            # Nothing is known at start: a sweep would take every router's table for an orphan.
            sweep_orphans=False,
            after=self._reconciled,
        )
        self.resource_rpc = resources_rpc.ResourcesPullRpcApi()
        self._register_rpc_consumers()
        self._agent.start()
        if self._takeover.taken and options.takeover_grace > 0:
            self._grace_thread = threading.Thread(
                target=self._end_takeover,
                args=(float(options.takeover_grace),),
                name="cthm-takeover-grace",
                daemon=True,
            )
            self._grace_thread.start()
        atexit.register(self.close)
        log.info(
            "cthm conntrack helper extension started: backend %s, owner %s, state in %s",
            self._backend.label,
            self._backend.owner,
            self._state_path,
        )

    def _register_rpc_consumers(self) -> None:
        registry.register(self._handle_notification, resources.CONNTRACKHELPER)
        self._connection = n_rpc.Connection()
        endpoints = [resources_rpc.ResourcesPushRpcCallback()]
        topic = resources_rpc.resource_type_versioned_topic(resources.CONNTRACKHELPER)
        self._connection.create_consumer(topic, endpoints, fanout=True)
        self._connection.consume_in_threads()

    def consume_api(self, agent_api: Any) -> None:
        self.agent_api = agent_api

    def add_router(self, context: Any, data: dict[str, Any]) -> None:
        self._sync_router(context, data)

    def update_router(self, context: Any, data: dict[str, Any]) -> None:
        self._sync_router(context, data)

    def delete_router(self, context: Any, data: dict[str, Any]) -> None:
        router_id = data["id"]
        self._migrated.pop(router_id, None)
        if self._source.forget_router(router_id) is not None:
            self._require_agent().reconcile_now([router_id])  # removes its table
        self._remove_state(router_id)

    def ha_state_change(self, context: Any, data: dict[str, Any]) -> None:
        router_id = data.get("router_id") or data.get("id")
        if not isinstance(router_id, str) or not self._source.knows(router_id):
            return
        agent = self._require_agent()
        agent.reconciler.book.need_full([router_id])  # read the kernel again, whatever it was
        agent.reconcile_now([router_id])

    def update_network(self, context: Any, data: dict[str, Any]) -> None:
        return None

    def _handle_notification(
        self, context: Any, resource_type: str, conntrack_helpers: list[Any], event_type: str
    ) -> None:
        if event_type in (events.CREATED, events.UPDATED):
            changed = self._source.upsert(conntrack_helpers)
        elif event_type == events.DELETED:
            changed = self._source.remove(conntrack_helpers)
        else:
            log.debug("conntrack helpers: event %s ignored", event_type)
            return
        self._require_agent().reconcile_now(sorted(changed))  # one reconcile per router

    def close(self) -> None:
        """Stops the agent's threads and the RPC consumer, closes the backends. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            registry.unsubscribe(self._handle_notification, resources.CONNTRACKHELPER)
        except Exception:  # already gone (the registry was cleared)
            log.debug("conntrack helper consumer was not registered", exc_info=True)
        try:
            self._connection.close()
        except Exception:  # the transport may be gone at exit
            log.debug("could not close the RPC connection", exc_info=True)
        self._stopping.set()
        if self._grace_thread is not None:
            self._grace_thread.join(timeout=10.0)
        if self._agent is not None:
            self._agent.stop()
        self._backend.close()
        if self._nft is not None and self._nft is not getattr(self._backend, "runner", None):
            self._nft.close()

    # --- inside ------------------------------------------------------------------------

    def _require_agent(self) -> NeutronAgent:
        if self._agent is None:
            raise RuntimeError("the extension is not initialized")
        return self._agent

    def _end_takeover(self, grace: float) -> None:
        """After the grace period: cthm's table goes from each taken-over namespace whose router
        this agent does not host there (never added, or moved elsewhere)."""
        if self._stopping.wait(grace):
            return
        agent = self._require_agent()
        for namespace, router_id in sorted(self._takeover.taken.items()):
            with agent.router_lock(router_id):  # not while the router is being reconciled
                router = self._source.router(router_id)
                if router is not None and router.namespace == namespace:
                    continue
                try:
                    removed = self._backend.delete(namespace)
                except NamespaceNotFound:
                    log.debug("namespace %s is gone: nothing taken over is left", namespace)
                    continue
                except (NftError, UnsafeValue, OSError) as exc:
                    log.warning(
                        "namespace %s: cannot remove cthm's taken-over rules: %s", namespace, exc
                    )
                    continue
            if removed:
                log.info(
                    "namespace %s: router %s was not synced within %.0f s: cthm's taken-over "
                    "conntrack helper rules removed",
                    namespace,
                    router_id,
                    grace,
                )
            if self._stopping.is_set():
                return

    def _sync_router(self, context: Any, data: dict[str, Any]) -> None:
        """The router's helpers as the server has them now, applied and verified."""
        router_id = data["id"]
        router_info = self.agent_api.get_router_info(router_id) if self.agent_api else None
        if router_info is None:
            log.debug("router %s is not managed by this agent (deleted meanwhile?)", router_id)
            return
        namespace = router_namespace(router_info)
        if namespace is None:
            log.debug(
                "router %s: distributed router on a %s agent: no snat namespace here, "
                "no conntrack helpers written",
                router_id,
                _agent_mode(router_info),
            )
            if self._source.knows(router_id):
                self.delete_router(context, data)
            return
        details = router_info.router or {}
        try:
            router = make_router(
                router_id,
                namespace,
                name=details.get("name"),
                project_id=details.get("project_id") or details.get("tenant_id"),
            )
        except InvalidInput as exc:
            log.error("router %s: refused: %s", router_id, exc.message)
            return
        helpers = self.resource_rpc.bulk_pull(
            context, resources.CONNTRACKHELPER, filter_kwargs={"router_id": router_id}
        )
        self._source.set_router(router, helpers)
        agent = self._require_agent()
        # A sync of the router reads its kernel state again (a full sync): drift is repaired
        # here too, not only by the periodic resync. Pushes stay partial.
        agent.reconciler.book.need_full([router_id])
        agent.reconcile_now([router_id])

    def _reconciled(self, router_id: str, result: ReconcileResult) -> None:
        """After each reconcile (in its thread, under the router's lock): the migration, once
        the router's rules are verified, and the state file."""
        held = self._source.status(router_id)
        if held is None:
            self._remove_state(router_id)
            return
        router, helpers = held
        if self._remove_neutron_rules and router.status is Status.ACTIVE:
            self._migrate(router_id, router.namespace, helpers)
        state = self._agent.kernel_state(router_id) if self._agent is not None else None
        try:
            write_state(
                self._state_path,
                router_id,
                {
                    "router_id": router_id,
                    "name": router.name,
                    "project_id": router.project_id,
                    "status": router.status.value,
                    "reason": router.status_reason,
                    "namespace": router.namespace,
                    "backend": self._backend.label,
                    "owner": self._backend.owner,
                    "host": self._host,
                    "helpers": helpers,
                    "desired": [
                        {
                            "protocol": a.protocol.value,
                            "port": a.port,
                            "helper": a.helper,
                            "direction": a.direction.value,
                        }
                        for a in (state.desired or () if state is not None else ())
                    ],
                    "in_sync": state.in_sync if state is not None else None,
                    "verified_at": _iso(state.verified_at if state is not None else None),
                    "checked_at": _iso(state.checked_at if state is not None else None),
                    "last_error": state.last_error if state is not None else None,
                    "last_action": result.action.value,
                    "written_at": _iso(datetime.now(UTC)),
                },
            )
        except (OSError, InvalidInput) as exc:
            log.warning("router %s: cannot write its state file: %s", router_id, exc)

    def _migrate(self, router_id: str, namespace: str, helpers: list[dict[str, Any]]) -> None:
        """Neutron's chains for the helpers cthm manages go (those verified ACTIVE), once per
        set of managed helpers."""
        managed = frozenset(h["id"] for h in helpers if h["status"] == Status.ACTIVE.value)
        done = self._migrated.get(router_id)
        if not managed or (done is not None and (done.clean or managed <= done.managed)):
            return
        others = [h["id"] for h in helpers if h["id"] not in managed]
        try:
            migrated = self._neutron_rules.remove(router_id, namespace, managed, others)
        except (NftError, UnsafeValue, OSError) as exc:
            log.warning(
                "router %s: could not remove Neutron's conntrack helper chains from %s: %s",
                router_id,
                namespace,
                exc,
            )
            return
        # No Neutron chain left: nothing will bring one back (Neutron's extension is not
        # loaded), so the router is not looked at again; else when cthm manages more helpers.
        self._migrated[router_id] = _Migrated(managed, clean=not migrated.left)

    def _remove_state(self, router_id: str) -> None:
        try:
            remove_state(self._state_path, router_id)
        except (OSError, InvalidInput) as exc:
            log.warning("router %s: cannot remove its state file: %s", router_id, exc)


def router_namespace(router_info: Any) -> str | None:
    """Where a router's helpers go: its namespace, or for a distributed router the snat
    namespace on a dvr_snat agent; None on other agents (no snat namespace here)."""
    details = router_info.router or {}
    if not details.get("distributed"):
        return str(router_info.ns_name)
    if _agent_mode(router_info) != "dvr_snat":
        return None
    snat = getattr(router_info, "snat_namespace", None)
    return str(snat.name) if snat is not None else None


def _agent_mode(router_info: Any) -> str | None:
    conf = getattr(router_info, "agent_conf", None)
    mode = getattr(conf, "agent_mode", None)
    return mode if isinstance(mode, str) else None


def _host(conf: Any) -> str:
    try:
        host = conf.host
    except cfg.NoSuchOptError:
        host = None
    return host if isinstance(host, str) and host else socket.gethostname()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
