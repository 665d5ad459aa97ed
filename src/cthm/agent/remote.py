"""Desired state from a remote cthm API: what a node agent (`cthm agent run`) reads and reports.

ApiClient is the node agent's one HTTP client. What the caller can do about an error decides
its type:

- domain `Unavailable`: no answer, a cut connection, a timeout, a 5xx (or 408/429): try again
  later, with backoff. The agent never reads it as "nothing is desired": the kernel stays as it
  is until the API answers again.
- `ApiRefused(status, message)`: any other 4xx; the request itself is wrong or not allowed
  (a refused token, a host this token may not act for). Retrying the same request does not
  help; the node agent's start() gives up on it, a running agent keeps retrying (someone may
  fix the server side) and says so.

A long poll must end at once when the agent stops: `interrupt(thread)` shuts down the socket
that thread is reading from (a shutdown, unlike a close, wakes a blocked recv), so its request
fails with Unavailable and the thread can see it is stopping.

RemoteSource is agent.ports.DesiredStateSource over the host endpoints (`/v2.0/hosts/{host}`):
every load() is a fresh read; a 404 means the router is not (or no longer) placed on this host,
which the reconciler takes as "gone from here": deleted only if the host has its tombstone.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpcore
import httpx

from cthm.agent.kernel_state import KernelStateBook
from cthm.agent.ports import (
    BindingReport,
    DesiredRouter,
    InvalidDesiredState,
    RouterReport,
)
from cthm.domain import (
    CthmError,
    Direction,
    HelperBinding,
    InvalidInput,
    Protocol,
    Router,
    Status,
    Unavailable,
)

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Auth-Token"  # noqa: S105 (a header name)
DEFAULT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
WATCH_GRACE = 10.0  # read timeout beyond the long poll's own: the server answers by then
RETRYABLE_4XX = frozenset({408, 429})
# Bindings per status request: a router holding thousands of them is reported in several
# requests, each well below the API's request size limit.
REPORT_CHUNK = 200

JSON = dict[str, Any]


class ApiRefused(Exception):
    """The API refused the request (a 4xx other than 408/429). `kind` is the Neutron error type."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(f"{status} {kind}: {message}" if kind else f"{status}: {message}")
        self.status = status
        self.message = message
        self.kind = kind


class Backoff:
    """Capped exponential delays with jitter: low, 2*low, ... high, each times 0.8..1.2 (so
    agents cut off together do not come back in step), never outside [low, high]."""

    def __init__(self, low: float = 0.2, high: float = 30.0) -> None:
        self.low = low
        self.high = high
        self.failures = 0

    def next(self) -> float:
        delay = min(self.high, self.low * 2.0 ** min(self.failures, 30))
        self.failures += 1
        jittered = delay * random.uniform(0.8, 1.2)  # noqa: S311 (not for secrets)
        return max(self.low, min(self.high, jittered))

    def reset(self) -> None:
        self.failures = 0


class ApiClient:
    """The agent's HTTP client for one API: base url, token, TLS verification, timeouts.
    Thread-safe (httpx.Client is); close() once every user is done."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        ca_file: Path | None = None,
        verify: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._sockets = _ReadingSockets()
        if ca_file is not None:
            context = ssl.create_default_context(cafile=str(ca_file))
        elif verify:
            context = ssl.create_default_context()
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        transport = _InterruptibleTransport(context, self._sockets)
        self._client = httpx.Client(
            base_url=self.url,
            headers={TOKEN_HEADER: token, "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            transport=transport,
            trust_env=False,  # a node agent talks to its API directly, never via env proxies
        )

    # --- the host endpoints ----------------------------------------------------------------

    def put_agent(self, host: str, agent: Mapping[str, Any]) -> JSON:
        """Registration and heartbeat (with the discovery report): the API's answer."""
        return self._json("PUT", f"/v2.0/hosts/{_segment(host)}/agent", body={"agent": agent})

    def host_routers(self, host: str) -> JSON:
        return self._json("GET", f"/v2.0/hosts/{_segment(host)}/routers")

    def host_router(self, host: str, router_id: str) -> JSON | None:
        """The router's desired state on this host; None when not placed here (or unknown)."""
        path = f"/v2.0/hosts/{_segment(host)}/routers/{_segment(router_id)}"
        try:
            answer = self._json("GET", path)
        except ApiRefused as exc:
            if exc.status == 404:
                return None
            raise
        router = answer.get("router")
        if not isinstance(router, dict):
            raise Unavailable(f"unexpected answer from the API to GET {path}")
        return router

    def put_status(self, host: str, router_id: str, status: Mapping[str, Any]) -> JSON | None:
        """None when the router is not placed on this host (any more)."""
        path = f"/v2.0/hosts/{_segment(host)}/routers/{_segment(router_id)}/status"
        try:
            return self._json("PUT", path, body={"status": status})
        except ApiRefused as exc:
            if exc.status == 404:
                return None
            raise

    def delete_tombstone(self, host: str, router_id: str) -> None:
        path = f"/v2.0/hosts/{_segment(host)}/tombstones/{_segment(router_id)}"
        try:
            self._json("DELETE", path)
        except ApiRefused as exc:
            if exc.status != 404:
                raise

    def watch(self, since: int, host: str, timeout: float) -> JSON:
        """One long poll; ApiRefused with status 410 when `since` is out of the history."""
        return self._json(
            "GET",
            "/v2.0/watch",
            params={"since": str(since), "host": host, "timeout": f"{timeout:g}"},
            read_timeout=timeout + WATCH_GRACE,
        )

    # --- plumbing ----------------------------------------------------------------------------

    def interrupt(self, thread: threading.Thread) -> bool:
        """Cuts the connection `thread` is reading an answer from now, if any (True then)."""
        return thread.ident is not None and self._sockets.shutdown(thread.ident)

    def close(self) -> None:
        self._client.close()

    def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> JSON:
        timeout = httpx.Timeout(
            read_timeout or self._timeout, connect=min(self._timeout, CONNECT_TIMEOUT)
        )
        try:
            response = self._client.request(method, path, params=params, json=body, timeout=timeout)
        except httpx.HTTPError as exc:  # transport errors, timeouts, a closed client
            raise Unavailable(f"cannot reach the API at {self.url}: {_why(exc)}") from exc
        except RuntimeError as exc:  # httpx: "Cannot send a request, as the client has been closed"
            raise Unavailable(f"cannot reach the API at {self.url}: {exc}") from exc
        status = response.status_code
        if status == 204:
            return {}
        if status >= 400:
            kind, message = _error(response)
            if status >= 500 or status in RETRYABLE_4XX:
                raise Unavailable(f"the API answered {status} to {method} {path}: {message}")
            raise ApiRefused(status, message, kind)
        try:
            answer = response.json()
        except ValueError as exc:
            raise Unavailable(f"the API answered {method} {path} with no JSON body") from exc
        if not isinstance(answer, dict):
            raise Unavailable(f"the API answered {method} {path} with no JSON object")
        return answer


class RemoteSource:
    """agent.ports.DesiredStateSource over one host's endpoints. `book` (set once the Agent
    exists) gives each status report the router's kernel summary."""

    def __init__(self, client: ApiClient, host: str) -> None:
        self._client = client
        self.host = host
        self.book: KernelStateBook | None = None
        self._lock = threading.Lock()
        self.revision: int | None = None  # of the last list
        self._listed: tuple[float, list[str], dict[str, str]] | None = None  # (monotonic, ...)

    def load(self, router_id: str) -> DesiredRouter | None:
        try:
            body = self._client.host_router(self.host, router_id)
        except ApiRefused as exc:
            raise _unavailable(exc) from exc
        if body is None:
            # Not placed here: the reconciler asks for tombstones next; that read must be fresh.
            with self._lock:
                self._listed = None
            return None
        return desired_router(body, router_id)

    def reload(self, router_id: str, last: DesiredRouter) -> DesiredRouter | None:
        """A fresh load(): the API sends a router's desired state whole."""
        return self.load(router_id)

    def load_all(self) -> dict[str, DesiredRouter | InvalidDesiredState]:
        found: dict[str, DesiredRouter | InvalidDesiredState] = {}
        for desired in self.desired_routers():
            if isinstance(desired, InvalidDesiredState):
                found[desired.router_id] = desired
            else:
                found[desired.router.id] = desired
        return found

    def router_ids(self) -> list[str]:
        return self._list()[0]

    def tombstones(self) -> dict[str, str]:
        """Fresh unless the list was read within the last second and no router was found gone
        since (a resync asks for router_ids() and tombstones() back to back)."""
        with self._lock:
            listed = self._listed
        if listed is not None and time.monotonic() - listed[0] < 1.0:
            return dict(listed[2])
        return self._list()[1]

    def clear_tombstone(self, router_id: str) -> None:
        try:
            self._client.delete_tombstone(self.host, router_id)
        except ApiRefused as exc:
            raise _unavailable(exc) from exc

    def report(self, report: RouterReport) -> None:
        kernel = self.book.summary(report.router_id) if self.book is not None else None
        bindings = [
            {
                "id": b.binding_id,
                "revision_number": b.revision_number,
                "status": b.status.value,
                "status_reason": b.reason,
            }
            for b in report.bindings
        ]
        chunks = [bindings[i : i + REPORT_CHUNK] for i in range(0, len(bindings), REPORT_CHUNK)]
        for chunk in chunks or [[]]:
            status = {
                "revision_number": report.revision_number,
                "status": report.status.value,
                "status_reason": report.reason,
                "conntrack_helpers": chunk,
                "kernel": kernel,
            }
            try:
                answer = self._client.put_status(self.host, report.router_id, status)
            except ApiRefused as exc:
                raise _unavailable(exc) from exc
            if answer is None:  # not placed here any more: nothing of ours to report
                log.debug(
                    "router %s: no longer placed on %s, report dropped", report.router_id, self.host
                )
                return

    def desired_routers(self) -> list[DesiredRouter | InvalidDesiredState]:
        """Every router placed on the host, from one list (the agent's start-up passes use it
        instead of a load() per router); a router that cannot be used is its refusal."""
        found: list[DesiredRouter | InvalidDesiredState] = []
        for body in self._list(bodies=True)[2]:
            try:
                router_id = str(body["id"])
            except (KeyError, TypeError) as exc:
                raise Unavailable(f"unexpected router list from the API: {exc!r:.200}") from exc
            try:
                found.append(desired_router(body, router_id))
            except InvalidDesiredState as exc:
                found.append(exc)
        return found

    def _list(
        self, *, bodies: bool = False
    ) -> tuple[list[str], dict[str, str], list[Mapping[str, Any]]]:
        try:
            answer = self._client.host_routers(self.host)
            ids = [str(r["id"]) for r in answer["routers"]]
            tombstones = {str(t["router_id"]): str(t["namespace"]) for t in answer["tombstones"]}
            revision = int(answer["revision"])
        except ApiRefused as exc:
            raise _unavailable(exc) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"unexpected router list from the API: {exc!r:.200}") from exc
        with self._lock:
            self.revision = revision
            self._listed = (time.monotonic(), ids, tombstones)
        return ids, tombstones, list(answer["routers"]) if bodies else []


def desired_router(body: Mapping[str, Any], router_id: str) -> DesiredRouter:
    """A DesiredRouter from the API's `desired` body, validated as the store validates rows:
    a router that fails is InvalidDesiredState (no namespace is touched on its behalf), a
    binding that fails is reported ERROR and never rendered."""
    try:
        revision = int(body["revision_number"])
        invalid = body.get("invalid")
        if invalid:
            raise InvalidDesiredState(router_id, revision, str(invalid))
        try:
            router = Router(
                id=str(body["id"]),
                name=body["name"],
                project_id=body["project_id"],
                namespace=body["namespace"],
                status=_status(body.get("status")),
                status_reason=str(body.get("status_reason") or ""),
                revision_number=revision,
                created_at=_time(body.get("created_at")),
            )
        except CthmError as exc:
            raise InvalidDesiredState(router_id, revision, f"refused: {exc.message}") from exc
        if router.id != router_id:
            raise InvalidDesiredState(
                router_id, revision, "refused: the API answered another router"
            )
        bindings: list[HelperBinding] = []
        rejected = [
            BindingReport(str(r["id"]), int(r["revision_number"]), Status.ERROR, str(r["reason"]))
            for r in body.get("rejected") or ()
        ]
        for item in body.get("conntrack_helpers") or ():
            binding_id = str(item["id"])
            binding_revision = int(item["revision_number"])
            try:
                bindings.append(
                    HelperBinding(
                        id=binding_id,
                        router_id=router.id,
                        project_id=router.project_id,
                        protocol=_enum(Protocol, item["protocol"], "protocol"),
                        port=item["port"],
                        helper=item["helper"],
                        direction=_enum(Direction, item.get("direction", "ingress"), "direction"),
                        status=_status(item.get("status")),
                        status_reason=str(item.get("status_reason") or ""),
                        revision_number=binding_revision,
                    )
                )
            except CthmError as exc:
                reason = f"refused: {exc.message}"
                rejected.append(BindingReport(binding_id, binding_revision, Status.ERROR, reason))
    except (KeyError, TypeError, ValueError) as exc:
        raise Unavailable(f"unexpected desired state from the API: {exc!r:.200}") from exc
    return DesiredRouter(router, tuple(bindings), tuple(rejected))


def _status(value: object) -> Status:
    try:
        return Status(str(value))
    except ValueError:
        return Status.PENDING  # this host has not reported it (or the API says something new)


def _enum(kind: type[Protocol] | type[Direction], value: object, field: str) -> Any:
    try:
        return kind(str(value))
    except ValueError:
        raise InvalidInput(f"unknown value {str(value)[:40]!r}", field=field) from None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _unavailable(exc: ApiRefused) -> Unavailable:
    """For the reconciler: a refused read or report is retried with backoff, like no answer
    (a token revoked, then renewed server-side), and never taken as "nothing desired"."""
    return Unavailable(f"the API refused the request: {exc}")


def _segment(value: str) -> str:
    return quote(value, safe="")


def _error(response: httpx.Response) -> tuple[str, str]:
    """(Neutron type, message) of an error answer, bounded, whatever its body."""
    try:
        body = response.json()
        error = body["NeutronError"]
        kind, message = str(error.get("type", "")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        kind, message = "", response.reason_phrase or ""
    return kind[:100], " ".join(message.split())[:500]


def _why(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


# --- interruptible connections ---------------------------------------------------------------


class _ReadingSockets:
    """Which socket each thread is blocked reading from (thread ident -> socket)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reading: dict[int, socket.socket] = {}

    @contextmanager
    def reading(self, sock: socket.socket | None) -> Iterator[None]:
        ident = threading.get_ident()
        if sock is not None:
            with self._lock:
                self._reading[ident] = sock
        try:
            yield
        finally:
            with self._lock:
                self._reading.pop(ident, None)

    def shutdown(self, ident: int) -> bool:
        with self._lock:
            sock = self._reading.get(ident)
            if sock is None:
                return False
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                return False
            return True


class _Stream(httpcore.NetworkStream):
    """httpcore's socket stream, registering the socket while a thread reads from it."""

    def __init__(self, inner: httpcore.NetworkStream, sockets: _ReadingSockets) -> None:
        self._inner = inner
        self._sockets = sockets

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with self._sockets.reading(self._inner.get_extra_info("socket")):
            return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._sockets)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, sockets: _ReadingSockets) -> None:
        self._inner = httpcore.SyncBackend()
        self._sockets = sockets

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream, self._sockets)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._inner.connect_unix_socket(path, timeout, socket_options), self._sockets
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _InterruptibleTransport(httpx.HTTPTransport):
    """httpx's transport over httpcore's pool with the backend above (no proxy support: a
    node agent reaches its API directly)."""

    def __init__(self, context: ssl.SSLContext, sockets: _ReadingSockets) -> None:
        super().__init__(verify=context, trust_env=False)
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=20,
            max_keepalive_connections=10,
            keepalive_expiry=5.0,
            network_backend=_Backend(sockets),
        )
