"""Proof by real traffic that a router namespace does (or does not) run the ftp/tftp helpers.

Built on a Topology and the servers in its server namespace. `assert_helpers_missing()` shows
that the active FTP data connection and the TFTP reply are lost while the FTP control
connection works and the router forwards the TFTP request; `assert_helpers_working()` shows
both downloads completing with the served bytes. Whatever assigns the helpers (a hand-written
ruleset, the cthm agent) goes between the two calls.

`origin` says who the FTP/TFTP client is: "client" (the client namespace, its connections
forwarded by the router: helpers assigned at PREROUTING) or "router" (the router namespace
itself: helpers assigned at OUTPUT; meaningful only with the topology's router INPUT firewall,
see topology.install_router_input_firewall). `router_originated()` gives the latter view of the
same servers. `concurrently()` runs several such checks at once, so slow failure-proofs (a
lost TFTP reply costs about two packet timeouts) overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from cthm.testing.servers import (
    RunningServer,
    TransferFailed,
    ftp_active_download,
    ftp_active_list,
    tftp_download,
)
from cthm.testing.topology import Topology, conntrack_dump, conntrack_entries

T = TypeVar("T")

HelperAssigner = Callable[[Topology], None]
"""Makes the router in a Topology run the ftp (tcp/21) and tftp (udp/69) helpers."""

Origin = Literal["client", "router"]
"""Which namespace runs the FTP/TFTP clients: the client one (forwarded) or the router."""

# Stages at which the FTP client has logged in: the control connection crossed the router.
_FTP_DATA_STAGES = frozenset({"list", "retr"})


@dataclass(frozen=True)
class HelperTraffic:
    topology: Topology
    ftp: RunningServer
    tftp: RunningServer
    ftp_file: str
    tftp_file: str
    ftp_timeout: float = 3.0
    tftp_timeout: float = 1.0  # per packet; a lost reply fails after about twice this
    origin: Origin = "client"

    @property
    def client_ns(self) -> str:
        """The namespace the FTP/TFTP clients run in."""
        t = self.topology
        return t.client_ns if self.origin == "client" else t.router_ns

    @property
    def source_addr(self) -> str:
        """The clients' address as the router's conntrack sees it (original direction)."""
        t = self.topology
        return t.client_addr if self.origin == "client" else t.router_server_addr

    def router_originated(self) -> HelperTraffic:
        """The same servers and files, with the router namespace as the client."""
        return replace(self, origin="router")

    def ftp_list(self) -> list[str]:
        return ftp_active_list(self.client_ns, self.ftp.host, self.ftp_timeout, port=self.ftp.port)

    def ftp_download(self) -> bytes:
        return ftp_active_download(
            self.client_ns,
            self.ftp.host,
            self.ftp_file,
            self.ftp_timeout,
            port=self.ftp.port,
        )

    def tftp_download(self) -> bytes:
        return tftp_download(
            self.client_ns,
            self.tftp.host,
            self.tftp_file,
            self.tftp_timeout,
            port=self.tftp.port,
        )

    def prove(self, assign: HelperAssigner) -> None:
        """Traffic fails, `assign` runs, traffic works: `assign` really assigns the helpers."""
        self.assert_helpers_missing()
        assign(self.topology)
        self.assert_helpers_working()

    def assert_helpers_missing(self) -> None:
        """Both transfers fail, and for the reason a missing helper gives."""
        with self._explained():
            self._check_missing()

    def assert_helpers_working(self) -> None:
        """Active FTP (list and download) and TFTP succeed with the served contents."""
        with self._explained():
            self._check_working()

    @contextmanager
    def _explained(self) -> Iterator[None]:
        # A failed proof shows the router's conntrack state: the one thing it is about.
        try:
            yield
        except AssertionError as exc:
            ns = self.topology.router_ns
            exc.add_note(f"{self.origin}-originated traffic; router {ns}:\n{conntrack_dump(ns)}")
            raise

    def _check_missing(self) -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The TFTP failure is a timeout: let it run while FTP is checked.
            tftp = pool.submit(_attempt, self.tftp_download)
            self._assert_ftp_data_blocked(self.ftp_list, "LIST")
            self._assert_ftp_data_blocked(self.ftp_download, "RETR")
            self._assert_tftp_reply_lost(tftp)
        for protocol, port in (("tcp", self.ftp.port), ("udp", self.tftp.port)):
            entries = self._router_entries(protocol, port)
            if not entries:
                raise AssertionError(
                    f"router {self.topology.router_ns} tracked no {protocol}/{port} connection"
                    f" from {self.source_addr}: the request never went through it, so the"
                    " topology is broken"
                )
            with_helper = [e for e in entries if "helper=" in e]
            if with_helper:
                raise AssertionError(
                    f"a helper is assigned on the router ({self.origin}-originated traffic):"
                    f" {with_helper}"
                )

    def _check_working(self) -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            tftp = pool.submit(_attempt, self.tftp_download)
            names = _expect_success(self.ftp_list, "active FTP LIST")
            if self.ftp_file not in names:
                raise AssertionError(f"active FTP LIST gave {names}, not {self.ftp_file}")
            got = _expect_success(self.ftp_download, "active FTP download")
            _assert_same(got, self.ftp.files[self.ftp_file], "active FTP download")
            outcome = tftp.result()
        if isinstance(outcome, TransferFailed):
            raise AssertionError(f"TFTP download failed with helpers assigned: {outcome}")
        _assert_same(outcome, self.tftp.files[self.tftp_file], "TFTP download")
        for protocol, port, helper in (
            ("tcp", self.ftp.port, "ftp"),
            ("udp", self.tftp.port, "tftp"),
        ):
            entries = self._router_entries(protocol, port)
            if not any(f"helper={helper}" in e for e in entries):
                raise AssertionError(
                    f"no {protocol}/{port} connection from {self.source_addr} with"
                    f" helper={helper}: {entries}"
                )

    def _router_entries(self, protocol: str, port: int) -> list[str]:
        # Only this origin's connections: the other origin's may share the port.
        return conntrack_entries(self.topology.router_ns, protocol, port, source=self.source_addr)

    def _assert_ftp_data_blocked(self, call: Callable[[], object], command: str) -> None:
        outcome = _attempt(call)
        if not isinstance(outcome, TransferFailed):
            raise AssertionError(f"active FTP {command} succeeded: a helper is at work")
        if outcome.stage not in _FTP_DATA_STAGES:
            raise AssertionError(
                f"FTP failed before its data connection ({outcome}): the control path is"
                " broken, so this proves nothing about helpers"
            )

    def _assert_tftp_reply_lost(self, future: Future[bytes | TransferFailed]) -> None:
        outcome = future.result()
        if not isinstance(outcome, TransferFailed):
            raise AssertionError("TFTP download succeeded: a helper is at work")
        if outcome.stage != "transfer" or "Timeout" not in outcome.kind:
            raise AssertionError(f"TFTP failed otherwise than by a lost reply: {outcome}")


def concurrently(*checks: Callable[[], None]) -> None:
    """Runs `checks` at the same time and waits for all of them.

    The first failure (in argument order) is raised; the others are attached to it as notes,
    so no failure goes unreported.
    """
    with ThreadPoolExecutor(max_workers=max(1, len(checks))) as pool:
        futures = [pool.submit(check) for check in checks]
    failures = [exc for f in futures if (exc := f.exception()) is not None]
    if not failures:
        return
    first = failures[0]
    for other in failures[1:]:
        first.add_note(f"also failed concurrently: {type(other).__name__}: {other}")
    raise first


def _attempt(call: Callable[[], T]) -> T | TransferFailed:
    try:
        return call()
    except TransferFailed as exc:
        return exc


def _expect_success(call: Callable[[], T], what: str) -> T:
    try:
        return call()
    except TransferFailed as exc:
        raise AssertionError(f"{what} failed with helpers assigned: {exc}") from exc


def _assert_same(got: bytes, want: bytes, what: str) -> None:
    if got != want:
        raise AssertionError(
            f"{what}: got {len(got)} bytes that differ from the {len(want)} served"
        )
