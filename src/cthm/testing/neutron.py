"""Drives a Neutron L3 agent extension the way Neutron's L3 agent does (issue 15), for tests.

What is real: Neutron's `RouterInfo` objects (`DvrEdgeRouter` / `DvrLocalRouter` for distributed
routers) whose `ns_name` is a real namespace `qrouter-<router id>` (and `snat-<router id>` on a
dvr_snat agent), Neutron's `L3AgentExtensionAPI`, `ConntrackHelper` objects, the push path
(`ResourcesPushRpcCallback().push(...)`: primitives -> objects -> the consumer registry -> the
extension) and the pull path (the extension's `ResourcesPullRpcApi().bulk_pull(...)` is an
oslo.messaging call answered by an RPC server standing in for neutron-server). What is replaced:
only oslo.messaging's transport (`fake://`, its in-process driver, whose listeners here wake
when a message is delivered rather than every 50 ms), and Neutron's privsep runs in this
process (the harness runs as root) instead of in a `sudo privsep-helper` daemon.

`cfg.CONF` and the consumer registry are process-wide in Neutron: a harness sets its options
when built and clears them at close(); pushes reach every extension alive, so run one harness
at a time (each only acts on the routers it hosts).

Needs the `neutron` package (the `neutron` extra) and root; nothing else in cthm imports it.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import oslo_messaging
from neutron.agent.l3 import dvr_edge_router, dvr_local_router, router_info
from neutron.agent.l3.l3_agent_extension_api import L3AgentExtensionAPI
from neutron.agent.linux import interface, iptables_manager
from neutron.api.rpc.callbacks import events, resource_manager, resources
from neutron.api.rpc.callbacks import exceptions as rpc_exc
from neutron.api.rpc.handlers import resources_rpc
from neutron.conf import common as common_config
from neutron.conf.agent import common as agent_config
from neutron.conf.agent.l3 import config as l3_config
from neutron.objects.conntrack_helper import ConntrackHelper
from neutron_lib import constants as lib_constants
from neutron_lib import context as n_context
from neutron_lib import rpc as n_rpc
from neutron_lib.agent import topics
from oslo_concurrency import lockutils
from oslo_config import cfg
from oslo_messaging._drivers import base as driver_base
from oslo_messaging._drivers import impl_fake  # the transport the harness replaces
from oslo_messaging.transport import RPCTransport

from cthm.testing.netns import netns_exists, run_in_namespace

__all__ = ["AGENT_BINARY", "AGENT_MODES", "EVENTS", "L3AgentHarness", "NeutronServer"]

AGENT_MODES = ("legacy", "dvr_snat", "dvr")
EVENTS = (events.CREATED, events.UPDATED, events.DELETED)
RESOURCE = resources.CONNTRACKHELPER
AGENT_BINARY = "neutron-l3-agent"
"""The L3 agent's process name, which Neutron's iptables chains are named after."""

_lock = threading.Lock()
_rpc_ready = False
_opts_ready = False
_live_servers: list[NeutronServer] = []
_pull_server: Any = None  # the one oslo.messaging server on the pull topic, while harnesses live


_delivered = threading.Condition()
"""Notified after every message the prompt fake driver delivers."""


class _PromptExchange(impl_fake.FakeExchange):  # type: ignore[misc]
    def deliver_message(self, *args: Any, **kwargs: Any) -> None:
        super().deliver_message(*args, **kwargs)
        with _delivered:
            _delivered.notify_all()


class _PromptExchangeManager(impl_fake.FakeExchangeManager):  # type: ignore[misc]
    _exchanges_lock = threading.Lock()
    _exchanges: dict[str, _PromptExchange] = {}

    def get_exchange(self, name: str | None) -> _PromptExchange:
        with self._exchanges_lock:
            name = name or self._default_exchange
            return self._exchanges.setdefault(name, _PromptExchange(name))


class _PromptListener(impl_fake.FakeListener):  # type: ignore[misc]
    @driver_base.batch_poll_helper  # type: ignore[untyped-decorator]
    def poll(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped.is_set():
            # Looked at and waited for under the condition: no delivery is missed between.
            with _delivered:
                for target in self._targets:
                    exchange = self._exchange_manager.get_exchange(target.exchange)
                    ctxt, message, reply_q, requeue = exchange.poll(target, self._pool)
                    if message is not None:
                        return impl_fake.FakeIncomingMessage(ctxt, message, reply_q, requeue)
                wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if wait <= 0:
                    return None
                _delivered.wait(wait)  # bounded: stop() is seen within 50 ms
        return None


class _PromptFakeDriver(impl_fake.FakeDriver):  # type: ignore[misc]
    """oslo.messaging's fake driver whose listeners wake on delivery (see _init_rpc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._exchange_manager = _PromptExchangeManager(self._default_exchange)

    def listen(self, target: Any, batch_size: int, batch_timeout: int | None) -> Any:
        exchange = target.exchange or self._default_exchange
        targets = [
            oslo_messaging.Target(topic=target.topic, server=target.server, exchange=exchange),
            oslo_messaging.Target(topic=target.topic, exchange=exchange),
        ]
        listener = _PromptListener(self._exchange_manager, targets)
        return driver_base.PollStyleListenerAdapter(listener, batch_size, batch_timeout)


class NeutronServer:
    """In-process stand-in for neutron-server's RPC side: what `bulk_pull` answers, by router
    id (`helpers[router_id]`), and how many pulls it answered."""

    def __init__(self) -> None:
        self.helpers: dict[str, list[ConntrackHelper]] = {}
        self.pulls = 0

    def owns(self, router_id: str) -> bool:
        return router_id in self.helpers

    def store(self, event: str, helpers: list[ConntrackHelper]) -> None:
        """What the server's database holds after `event` on `helpers` (by helper id)."""
        ids = {h.id for h in helpers}
        for router_id, held in self.helpers.items():
            self.helpers[router_id] = [h for h in held if h.id not in ids]
        if event != events.DELETED:
            for helper in helpers:
                self.helpers.setdefault(helper.router_id, []).append(helper)


class _PullEndpoint:
    """Answers the agent's pulls as Neutron's ResourcesPullRpcCallback does (same target, same
    methods and arguments), from the NeutronServer that holds the router, not a database."""

    target = oslo_messaging.Target(version="1.1", namespace=lib_constants.RPC_NAMESPACE_RESOURCES)

    def bulk_pull(
        self,
        context: Any,
        resource_type: str,
        version: str,
        filter_kwargs: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        router_id = (filter_kwargs or {}).get("router_id")
        found: list[ConntrackHelper] = []
        for server in list(_live_servers):
            if router_id is not None and server.owns(router_id):
                server.pulls += 1
                found = list(server.helpers[router_id])
                break
        return [h.obj_to_primitive(target_version=version) for h in found]

    def pull(
        self, context: Any, resource_type: str, version: str, resource_id: str
    ) -> dict[str, Any] | None:
        for server in list(_live_servers):
            for held in server.helpers.values():
                for helper in held:
                    if helper.id == resource_id:
                        primitive: dict[str, Any] = helper.obj_to_primitive(target_version=version)
                        return primitive
        return None


class _RouterFactory:
    """The L3 agent's RouterFactory (neutron.agent.l3.agent, which this avoids importing:
    it pulls in the whole agent)."""

    def __init__(self) -> None:
        self.routers: dict[frozenset[str], type] = {}

    def register(self, features: list[str], router_cls: type) -> None:
        self.routers[frozenset(features)] = router_cls


class _Agent:
    """The least of an L3 agent a RouterInfo keeps a reference to."""

    def __init__(self, conf: cfg.ConfigOpts, host: str) -> None:
        self.conf = conf
        self.host = host
        self.context = n_context.get_admin_context()


def _register_opts(conf: cfg.ConfigOpts) -> None:
    global _opts_ready
    if _opts_ready:
        return
    if "host" not in conf:
        common_config.register_core_common_config_opts(conf)
    agent_config.register_root_helper(conf)
    agent_config.register_agent_state_opts_helper(conf)  # report_interval: iptables' -w
    agent_config.register_interface_opts(conf)
    agent_config.register_interface_driver_opts_helper(conf)
    agent_config.register_iptables_opts(conf)
    agent_config.register_process_monitor_opts(conf)
    agent_config.register_ra_opts(conf)
    agent_config.register_external_process_opts(conf)
    l3_config.register_l3_agent_config_opts(l3_config.OPTS, conf)
    lockutils.get_lock_path(conf)  # registers [oslo_concurrency] lock_path on conf
    try:
        conf.find_file("policy.yaml")
    except cfg.NotInitializedError:
        # Parsed once, with no file: Neutron's policy engine (building a context) needs it.
        conf([], project="neutron", default_config_files=[], default_config_dirs=[])
    _opts_ready = True


def _init_rpc(conf: cfg.ConfigOpts) -> None:
    """oslo.messaging's in-process fake driver as Neutron's RPC transport (once a process:
    ResourcesPullRpcApi is a singleton that keeps the client of the first transport)."""
    global _rpc_ready
    if _rpc_ready:
        return
    oslo_messaging.get_rpc_transport(conf, url="fake://").cleanup()  # registers its options
    conf.set_default("transport_url", "fake://")
    n_rpc.init(conf)
    # The same in-process driver, but a listener wakes when a message is delivered instead of
    # polling every 50 ms: a bulk_pull takes microseconds, as on a real broker (benchmarks).
    driver = _PromptFakeDriver(
        conf,
        oslo_messaging.TransportURL.parse(conf, "fake://"),
        default_exchange=conf.control_exchange,
        allowed_remote_exmods=list(n_rpc._DFT_EXMODS),
    )
    n_rpc.TRANSPORT = RPCTransport(driver)
    _run_privsep_in_process()
    _rpc_ready = True


def _run_privsep_in_process() -> None:
    """Neutron's privileged calls (ip_lib, iptables-save/restore through IptablesManager) run
    in this process, which is root, instead of through `sudo privsep-helper`."""
    import neutron.privileged as privileged

    for name in dir(privileged):
        context = getattr(privileged, name)
        if hasattr(context, "set_client_mode"):
            context.set_client_mode(False)


def _start_pull_server(host: str) -> None:
    global _pull_server
    if _pull_server is None:
        target = oslo_messaging.Target(topic=topics.PLUGIN, server=host)
        _pull_server = n_rpc.get_server(target, [_PullEndpoint()])
        _pull_server.start()


def _stop_pull_server() -> None:
    global _pull_server
    if _pull_server is not None:
        _pull_server.stop()
        _pull_server.wait()
        _pull_server = None


def _iptables(namespace: str) -> Any:
    return iptables_manager.IptablesManager(
        use_ipv6=True, namespace=namespace, binary_name=AGENT_BINARY
    )


def _consumers() -> set[Any]:
    manager = resource_manager.ConsumerResourceCallbacksManager()
    try:
        return set(manager.get_callbacks(RESOURCE))
    except rpc_exc.CallbackNotFound:
        return set()


class L3AgentHarness:
    """One L3 agent's side of an extension: builds and initializes `extension_class` as the
    agent's extension manager does (consume_api, then initialize), hosts routers in real
    namespaces, and delivers pulls and pushes through Neutron's RPC code.

    close() closes the extension, unregisters the consumers it registered and deletes exactly
    the namespaces the harness created; use it in a `finally` or as a context manager.
    takeover_namespaces, takeover_grace: cthm's `[cthm]` options of the same names; the
    harness takes over no namespace unless told which (the host is shared with others)."""

    def __init__(
        self,
        extension_class: type,
        *,
        state_path: Path,
        backend: str = "nftables",
        resync_interval: int = 0,
        host: str | None = None,
        agent_mode: str = "legacy",
        takeover_namespaces: Sequence[str] = (),
        takeover_grace: int = 600,
    ) -> None:
        if agent_mode not in AGENT_MODES:
            raise ValueError(f"agent_mode must be one of {AGENT_MODES}, not {agent_mode!r}")
        self.host = host or f"cthm-harness-{uuid.uuid4().hex[:8]}"
        self.agent_mode = agent_mode
        self.state_path = Path(state_path)
        self.server = NeutronServer()
        self.router_info: dict[str, Any] = {}
        self._namespaces: list[str] = []
        self._overrides: list[tuple[str, str | None]] = []
        self._closed = False
        conf = cfg.CONF
        self.conf = conf
        with _lock:
            _register_opts(conf)
            _init_rpc(conf)
            _live_servers.append(self.server)
            _start_pull_server(self.host)
        try:
            self.context = n_context.get_admin_context()
            self._configure(backend, resync_interval)
            # The host is shared (other tests, other agents): cthm's extension takes over
            # Neutron's chains only in the namespaces named (patterns), none by default.
            self._override("takeover_namespaces", list(takeover_namespaces), "cthm")
            self._override("takeover_grace", takeover_grace, "cthm")
            self.agent = _Agent(conf, self.host)
            self.driver = interface.NullDriver(conf)
            self.agent_api = L3AgentExtensionAPI(self.router_info, _RouterFactory())
            before = _consumers()
            try:
                self.extension: Any = extension_class()
                self.extension.consume_api(self.agent_api)
                self.extension.initialize(n_rpc.Connection(), lib_constants.L3_AGENT_MODE)
            finally:
                self._consumers = _consumers() - before
        except BaseException:
            self.close()
            raise

    def _configure(self, backend: str, resync_interval: int) -> None:
        from cthm.neutron import config as cthm_config  # registers `[cthm]` (no neutron import)

        cthm_config.register_opts(self.conf)
        self.state_path.mkdir(parents=True, exist_ok=True)
        locks = self.state_path / "locks"
        locks.mkdir(exist_ok=True)
        self._override("host", self.host)
        self._override("state_path", str(self.state_path))
        self._override("agent_mode", self.agent_mode)
        # Neutron's root helper: this process is root, so no sudo (and no rootwrap daemon).
        self._override("root_helper", "", "AGENT")
        self._override("root_helper_daemon", None, "AGENT")
        self._override("lock_path", str(locks), "oslo_concurrency")
        self._override("backend", backend, "cthm")
        self._override("resync_interval", resync_interval, "cthm")
        self._override("state_path", str(self.state_path / "cthm"), "cthm")

    def _override(self, name: str, value: Any, group: str | None = None) -> None:
        self.conf.set_override(name, value, group)
        self._overrides.append((name, group))

    # -- routers --------------------------------------------------------------------------

    def add_router(
        self,
        router_id: str | None = None,
        *,
        distributed: bool = False,
        create_namespace: bool = True,
    ) -> Any:
        """A router scheduled to this agent: its RouterInfo (ns_name is a real namespace, made
        here unless create_namespace=False says it exists already), then the extension's
        add_router, as the agent's _process_added_router calls it. Returns the RouterInfo."""
        router_id = router_id or str(uuid.uuid4())
        if router_id in self.router_info:
            raise ValueError(f"router {router_id} is already on this agent")
        if distributed and self.agent_mode == "legacy":
            raise ValueError("a legacy agent hosts no distributed router: use agent_mode=dvr*")
        router: dict[str, Any] = {
            "id": router_id,
            "distributed": distributed,
            "ha": False,
            "enable_snat": True,
            "gw_port": None,
            "gw_port_host": self.host if distributed else None,
            "project_id": "harness",
            "routes": [],
            lib_constants.INTERFACE_KEY: [],
        }
        info = self._router_info(router_id, router, distributed)
        if create_namespace:
            self._create_namespace(info.ns_name)
        if distributed and self.agent_mode == "dvr_snat":
            snat_ns = info.snat_namespace.name
            if create_namespace:
                self._create_namespace(snat_ns)
            # What DvrEdgeRouter._create_dvr_gateway sets up on the snat host.
            info.snat_iptables_manager = _iptables(snat_ns)
        self.server.helpers.setdefault(router_id, [])
        self.router_info[router_id] = info
        self.extension.add_router(self.context, router)
        return info

    def _router_info(self, router_id: str, router: dict[str, Any], distributed: bool) -> Any:
        args = (self.agent, router_id, router, self.conf, self.driver)
        if not distributed:
            info = router_info.RouterInfo(*args, use_ipv6=True)
        elif self.agent_mode == "dvr_snat":
            info = dvr_edge_router.DvrEdgeRouter(self.host, *args, use_ipv6=True)
        else:
            info = dvr_local_router.DvrLocalRouter(self.host, *args, use_ipv6=True)
        # Chains named as in the L3 agent's process (neutron-l3-agent-*), not after this one's
        # argv[0]: what RouterInfo.__init__ set up, again with the agent's binary name.
        info.iptables_manager = _iptables(info.ns_name)
        info.initialize_address_scope_iptables()
        info.initialize_metadata_iptables()
        return info

    def update_router(self, router_id: str) -> None:
        """The agent's _process_updated_router: the extension's update_router(router dict)."""
        self.extension.update_router(self.context, self.router_info[router_id].router)

    def ha_state_change(self, router_id: str, state: str = "primary") -> None:
        """The data neutron.agent.l3.ha's state change gives the extension manager."""
        router = self.router_info[router_id].router
        data = {
            "router_id": router_id,
            "state": state,
            "host": self.host,
            "enable_ndp_proxy": router.get("enable_ndp_proxy", False),
        }
        self.extension.ha_state_change(self.context, data)

    def delete_router(self, router_id: str, *, delete_namespace: bool = True) -> None:
        """The agent's _safe_router_removed: the extension's delete_router while the router's
        RouterInfo and namespace still exist, then both go (the namespace only if
        delete_namespace and the harness made it)."""
        info = self.router_info[router_id]
        self.extension.delete_router(self.context, info.router)
        del self.router_info[router_id]
        if delete_namespace:
            names = [info.ns_name]
            snat = getattr(info, "snat_namespace", None)
            if snat is not None:
                names.append(snat.name)
            for name in names:
                if name in self._namespaces:
                    self._delete_namespace(name)

    # -- helpers and notifications --------------------------------------------------------

    def helper(
        self, router_id: str, protocol: str, port: int, helper: str, id: str | None = None
    ) -> ConntrackHelper:
        """A Neutron ConntrackHelper object (neither stored on the server nor pushed yet)."""
        return ConntrackHelper(
            id=id or str(uuid.uuid4()),
            router_id=router_id,
            protocol=protocol,
            port=port,
            helper=helper,
        )

    def push(self, event: str, helpers: list[ConntrackHelper]) -> None:
        """neutron-server's side of a change: the server's copy first (what later pulls
        answer), then the agent's ResourcesPushRpcCallback with the objects' primitives."""
        if event not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, not {event!r}")
        if not helpers:
            raise ValueError("a push carries at least one helper")
        self.server.store(event, helpers)
        resources_rpc.ResourcesPushRpcCallback().push(
            self.context,
            resource_type=RESOURCE,
            resource_list=[h.obj_to_primitive() for h in helpers],
            event_type=event,
        )

    # -- namespaces -----------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        """Every namespace this harness created (and has not deleted yet)."""
        return list(self._namespaces)

    def _create_namespace(self, name: str) -> None:
        if netns_exists(name):
            raise ValueError(f"namespace {name} exists already: pass create_namespace=False")
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
        self._namespaces.append(name)
        run_in_namespace(name, ["ip", "link", "set", "lo", "up"])

    def _delete_namespace(self, name: str) -> None:
        self._namespaces.remove(name)
        if netns_exists(name):
            subprocess.run(
                ["ip", "netns", "del", name], check=False, capture_output=True, timeout=10
            )

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the extension (Neutron's has no close(): its RPC consumer is stopped), drops
        the consumers it registered and the options this harness set, deletes exactly the
        namespaces it created. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            extension = getattr(self, "extension", None)
            if extension is not None:
                if hasattr(extension, "close"):
                    extension.close()
                elif getattr(extension, "_connection", None) is not None:
                    extension._connection.close()
        finally:
            manager = resource_manager.ConsumerResourceCallbacksManager()
            for callback in getattr(self, "_consumers", ()):
                if callback in _consumers():
                    manager.unregister(callback, RESOURCE)
            for name, group in reversed(self._overrides):
                self.conf.clear_override(name, group)
            for name in list(self._namespaces):
                self._delete_namespace(name)
            with _lock:
                if self.server in _live_servers:
                    _live_servers.remove(self.server)
                if not _live_servers:
                    _stop_pull_server()

    def __enter__(self) -> L3AgentHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
