"""The node agent's pure parts: the API's desired state read back as the store's rows are (a
bad router touches no namespace, a bad binding is reported, never rendered), the kernel
summary a host reports (bounded as the contract says), the backoff's bounds, and a long poll
cut at once from another thread (how stop() ends the watch), over HTTP and HTTPS."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cthm.agent import InvalidDesiredState, KernelStateBook
from cthm.agent.remote import ApiClient, Backoff, desired_router
from cthm.domain import Assignment, Direction, Protocol, Status, Unavailable

ROUTER = str(uuid.uuid4())
BINDING = str(uuid.uuid4())


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": ROUTER,
        "name": "r1",
        "project_id": "p1",
        "namespace": "qrouter-x",
        "revision_number": 4,
        "status": "ACTIVE",
        "status_reason": "",
        "invalid": None,
        "conntrack_helpers": [
            {
                "id": BINDING,
                "protocol": "tcp",
                "port": 21,
                "helper": "ftp",
                "direction": "ingress",
                "revision_number": 2,
                "status": "PENDING",
                "status_reason": "",
            }
        ],
        "rejected": [],
    }
    base.update(changes)
    return base


def test_desired_state_is_read_back_with_this_hosts_status() -> None:
    desired = desired_router(body(), ROUTER)
    assert desired.router.namespace == "qrouter-x"
    assert desired.router.revision_number == 4
    assert desired.router.status is Status.ACTIVE
    [binding] = desired.bindings
    assert (binding.protocol, binding.port, binding.helper) == (Protocol.TCP, 21, "ftp")
    assert binding.direction is Direction.INGRESS
    assert binding.status is Status.PENDING
    assert desired.rejected == ()


@pytest.mark.parametrize(
    "changes",
    [
        {"invalid": "refused: namespace edited in the database"},
        {"namespace": "../../etc"},
        {"namespace": "bad name"},
        {"id": str(uuid.uuid4())},  # another router than asked for
    ],
)
def test_an_unusable_router_touches_no_namespace(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidDesiredState) as refused:
        desired_router(body(**changes), ROUTER)
    assert refused.value.router_id == ROUTER
    assert refused.value.revision_number == 4


def test_an_unusable_binding_is_reported_not_rendered() -> None:
    bad = {**body()["conntrack_helpers"][0], "port": 70000}
    refused_id = str(uuid.uuid4())
    rejected_by_api = {"id": refused_id, "revision_number": 1, "reason": "bad row"}
    desired = desired_router(body(conntrack_helpers=[bad], rejected=[rejected_by_api]), ROUTER)
    assert desired.bindings == ()
    reasons = {r.binding_id: (r.status, r.reason) for r in desired.rejected}
    assert reasons[refused_id] == (Status.ERROR, "bad row")
    assert reasons[BINDING][0] is Status.ERROR
    assert "port" in reasons[BINDING][1]


def test_an_answer_of_another_shape_is_unavailable_not_empty() -> None:
    with pytest.raises(Unavailable):
        desired_router({"id": ROUTER}, ROUTER)


class _Table:
    def __init__(self, assignments: list[Assignment], garbage: tuple[str, ...] = ()) -> None:
        self.assignments = tuple(assignments)
        self.garbage = garbage
        self.owner: str | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Table) and (self.assignments, self.garbage) == (
            other.assignments,
            other.garbage,
        )

    __hash__ = None  # type: ignore[assignment]


def test_kernel_summary_shape_and_bounds() -> None:
    book = KernelStateBook()
    want = [Assignment(Protocol.TCP, port, "ftp") for port in range(1, 301)]
    have = [Assignment(Protocol.UDP, port, "tftp") for port in range(1, 151)]
    garbage = tuple("x" * 5000 for _ in range(30))
    assert not book.observed(ROUTER, "qrouter-x", 7, _Table(want), _Table(have, garbage))
    summary = book.summary(ROUTER)
    assert summary is not None
    assert summary["router_id"] == ROUTER
    assert summary["namespace"] == "qrouter-x"
    assert summary["revision_number"] == 7
    assert summary["in_sync"] is False
    assert summary["table_present"] is True
    assert len(summary["missing"]) == 100
    assert summary["missing"][0] == {
        "protocol": "tcp",
        "port": 1,
        "direction": "ingress",
        "kernel_helper": "ftp",
    }
    assert len(summary["unexpected"]) == 100
    assert len(summary["garbage"]) == 20
    assert all(len(text) == 1024 for text in summary["garbage"])
    assert summary["checked_at"].endswith("Z")
    assert summary["verified_at"] is None
    assert book.summaries() == [summary]
    assert book.summary(str(uuid.uuid4())) is None


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(0.2, 30.0)
    delays = [backoff.next() for _ in range(40)]
    assert all(0.2 <= d <= 30.0 for d in delays)
    assert delays[0] < 0.3
    assert delays[-1] >= 24.0
    backoff.reset()
    assert backoff.next() < 0.3


class SilentServer:
    """Accepts connections (TLS when given a certificate) and never answers: a long poll."""

    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._context: ssl.SSLContext | None = None
        if cert is not None and key is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(cert, key)
        self._held: list[socket.socket] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            if self._context is not None:
                conn.settimeout(5)
                try:
                    conn = self._context.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    conn.close()
                    continue
            self._held.append(conn)  # read nothing, answer nothing

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self._listener.close()
        for conn in self._held:
            conn.close()


def certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_a_long_poll_is_cut_at_once_from_another_thread(tmp_path: Path, tls: bool) -> None:
    cert, key = certificate(tmp_path) if tls else (None, None)
    server = SilentServer(cert, key)
    scheme = "https" if tls else "http"
    client = ApiClient(f"{scheme}://127.0.0.1:{server.port}", "t", ca_file=cert, timeout=5.0)
    outcome: list[BaseException] = []

    def poll() -> None:
        try:
            client.watch(0, "node-a", 30.0)
        except BaseException as exc:  # recorded for the test
            outcome.append(exc)

    thread = threading.Thread(target=poll)
    try:
        thread.start()
        time.sleep(0.5)  # connected (and TLS done), waiting for an answer
        assert thread.is_alive()
        start = time.monotonic()
        deadline = start + 3.0
        while thread.is_alive() and time.monotonic() < deadline:
            client.interrupt(thread)
            thread.join(0.05)
        assert not thread.is_alive()
        assert time.monotonic() - start < 1.0
        [error] = outcome
        assert isinstance(error, Unavailable)
    finally:
        client.close()
        server.close()
        thread.join(5)
