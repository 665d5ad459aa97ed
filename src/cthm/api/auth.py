"""Authentication: every request but the exempt few carries a token; the principal comes from it.

The token is read from `X-Auth-Token` (OpenStack's header, so openstacksdk works) or
`Authorization: Bearer`. A request without a usable token gets one answer, whatever the cause
(missing, malformed, unknown, expired, revoked): 401, "Authentication required" and
`WWW-Authenticate: Bearer`. Why it failed goes to the server log, with the token's id when the
token exists; a secret never does, not even in part.

This runs as middleware, before routing: an unauthenticated request learns nothing, not even
whether a path exists or a body would parse. Repeated failures from one client are slowed down
(`FailureThrottle`) without blocking anyone else: the wait is an async sleep.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cthm.api.errors import Unauthenticated, domain_error_response
from cthm.api.principal import Principal
from cthm.domain import AuthToken, CthmError
from cthm.store import Repository, Store

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Auth-Token"  # noqa: S105 (a header name)
CHALLENGE = {"WWW-Authenticate": "Bearer"}
# What a secret looks like (cthm.store.tokens.new_secret); anything else is refused unread.
SECRET_FORMAT = re.compile(r"cthm_[A-Za-z0-9_-]{43}")
_BEARER = re.compile(r"bearer[ \t]+(\S+)[ \t]*", re.IGNORECASE)
# Version discovery (openstacksdk asks before it has a token), the health and readiness checks.
EXEMPT: frozenset[tuple[str, str]] = frozenset(
    (method, path)
    for method in ("GET", "HEAD")
    for path in ("/", "/v2.0", "/v2.0/", "/healthz", "/readyz")
)
CLIENT_KEY_MAX = 64
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Where a write request's unit of work waits in the request's ASGI state (see HeldUnit).
HELD_UNIT = "cthm_unit_of_work"
BEGIN_LIMITER = "cthm_begin_threads"
# Threads that may wait at once for a write unit to begin (SQLite: for the write lock), apart
# from the thread pool that runs the routes: waiting writers must never take every thread
# while the writer they wait for needs one to finish.
BEGIN_THREADS = 40


class AuthFailure(Exception):
    """Why a request is not authenticated: for the server log only, never for the caller."""

    def __init__(self, reason: str, token_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token_id = token_id
        self.failures_in_a_row = 1


# The status page checks the token of its session cookie itself (cthm.api.routes.ui).
UI_PATH = "/ui"


def is_exempt(method: str, path: str) -> bool:
    return (method, path) in EXEMPT or path == UI_PATH or path.startswith(UI_PATH + "/")


def secret_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The one token the request carries; AuthFailure if none, several different, or a malformed
    one. The token is not checked against the store here."""
    found: list[str] = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name == TOKEN_HEADER.lower():
            found.append(value.strip())
        elif name == "authorization":
            match = _BEARER.fullmatch(value.strip())
            if match is None:
                raise AuthFailure("an Authorization header that is not 'Bearer <token>'")
            found.append(match.group(1))
    if not found:
        raise AuthFailure("no token")
    if len(set(found)) > 1:
        raise AuthFailure("different tokens in one request")
    secret = found[0]
    if not SECRET_FORMAT.fullmatch(secret):
        raise AuthFailure("a malformed token")
    return secret


def client_key(host: str | None) -> str:
    """Whom failures are counted against: the client's address; for IPv6 its /64, which one
    host usually holds whole (counting single addresses would let it rotate past the limit)."""
    if not host:
        return "unknown"
    return _client_key(host)


# Every request asks (the middleware), mostly for the same few clients: parsing an address
# each time was ~1% of a create's CPU. Bounded, so rotating addresses only evict entries.
@functools.lru_cache(maxsize=4096)
def _client_key(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:CLIENT_KEY_MAX]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(slots=True)
class ClientFailures:
    """A client's recent failures: how many in a row (no gap longer than the window), the last
    one's time, and the delay the throttle decided for the last one."""

    count: int
    last: float
    delay: float


class FailureThrottle:
    """Decides how long a failed attempt waits before its 401.

    The first `free_failures` failures of a client cost nothing; each further one waits
    base_delay, doubling, up to max_delay. A client's count is forgotten after `window` seconds
    without a failure. Success does not reset it (a client holding one valid token must not be
    able to wipe its record while guessing others). At most `max_clients` clients are tracked;
    the one whose last failure is oldest is forgotten first, so memory stays bounded.

    Used from the event loop only (the middleware), so it needs no lock.
    """

    def __init__(
        self,
        *,
        free_failures: int = 5,
        window: float = 60.0,
        base_delay: float = 0.1,
        max_delay: float = 2.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if free_failures < 0 or window <= 0 or base_delay < 0 or max_delay < base_delay:
            raise ValueError("free_failures >= 0, window > 0, 0 <= base_delay <= max_delay")
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.free_failures = free_failures
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, ClientFailures] = OrderedDict()

    def record_failure(self, client: str) -> ClientFailures:
        """Counts a failure of `client`; the result says how long this one waits (`delay`)."""
        now = self._clock()
        state = self._clients.pop(client, None)
        if state is None or now - state.last > self.window:
            state = ClientFailures(count=0, last=now, delay=0.0)
        state.count += 1
        state.last = now
        state.delay = self.delay_for(state.count)
        self._clients[client] = state  # most recent last
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        return state

    def delay_for(self, count: int) -> float:
        over = count - self.free_failures
        if over <= 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** min(over - 1, 62)))

    def state(self, client: str) -> ClientFailures | None:
        """The client's current record (None: none, or forgotten after a quiet window)."""
        state = self._clients.get(client)
        if state is None or self._clock() - state.last > self.window:
            return None
        return ClientFailures(state.count, state.last, state.delay)

    def tracked_clients(self) -> int:
        return len(self._clients)


def _now() -> datetime:
    return datetime.now(UTC)


class HeldUnit:
    """A write request's one transaction, and its token, read in it.

    The middleware only checks the token's form (no thread hop); the token is looked up by
    whichever comes first: a route that ends its transaction in its own thread
    (deps.ends_transaction) begins the unit there and reads the token as its first statement
    (one thread hop for the whole write); any other route, by its first dependency
    (`authenticate_write`); an answer sent before either (no route, a body refused), by
    the middleware before that answer goes out. A route's repository commits or rolls it back
    before the response is sent; whatever no route claimed the middleware rolls back.

    Its steps run in worker threads, one after the other, never at once."""

    def __init__(
        self,
        store: Store,
        secret: str = "",
        check: Callable[[AuthToken | None], Principal] | None = None,
    ) -> None:
        self._unit = store.unit_of_work(write=True)
        self.secret = secret
        self._check = check
        self.repository: Repository | None = None
        self.principal: Principal | None = None
        self.attempted = False  # the token was (or is being) looked up
        self._claimed = False
        self.ended = False

    def begin(self) -> Repository:
        self.repository = self._unit.__enter__()
        return self.repository

    def authenticate(self, router_id: str | None = None) -> Principal:
        """Begins the unit and reads the token in it, as its first statement. AuthFailure (or
        the store's error, as the unit of work names it: Unavailable) once the unit is rolled
        back: nothing is held while the failure waits out the throttle. router_id: the router
        the route reads first, read in the same statement (Repository.lookup_token)."""
        if self.principal is not None:
            return self.principal
        if self._check is None or self.attempted:  # never twice, never without the checks
            raise AuthFailure("no token looked up for this request")
        self.attempted = True
        try:
            principal = self._check(self.begin().lookup_token(self.secret, router_id=router_id))
        except BaseException as exc:
            self.end(exc)
            raise
        self.principal = principal
        return principal

    def claim(self) -> Repository | None:
        """The repository, to its one user; None once claimed or ended."""
        if self.repository is None or self._claimed or self.ended:
            return None
        self._claimed = True
        return self.repository

    def end(self, error: BaseException | None = None) -> None:
        """Commits (no error) or rolls back; raises what the unit of work raises (a commit that
        failed: Unavailable, Conflict). Idempotent."""
        if self.repository is None or self.ended:
            return
        self.ended = True
        if error is None:
            self._unit.__exit__(None, None, None)
        else:
            self._unit.__exit__(type(error), error, error.__traceback__)

    async def end_in_thread(self, error: BaseException | None = None) -> None:
        """end() in a worker thread of its own, shielded from cancellation (a client gone must
        not leave the transaction, and SQLite's write lock, held)."""
        if self.repository is None or self.ended:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.end, error, limiter=anyio.CapacityLimiter(1))


Sleep = Callable[[float], Awaitable[None]]


class Authenticator:
    """Turns a request's headers into a Principal, or an AuthFailure after the throttle's wait.

    throttle: how failures are slowed down; clock: the time tokens expire against; sleep: how
    a failure waits (an async sleep: it holds up only the failing request).
    """

    def __init__(
        self,
        throttle: FailureThrottle | None = None,
        *,
        clock: Callable[[], datetime] = _now,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.throttle = throttle if throttle is not None else FailureThrottle()
        self.clock = clock
        self.sleep = sleep

    async def authenticate(
        self,
        store: Store,
        headers: Iterable[tuple[bytes, bytes]],
        client: str,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> Principal:
        """The principal of a valid token, read in a transaction of its own. Raises AuthFailure
        (after waiting as the throttle decides), or CthmError when the store cannot answer
        (Unavailable: 503). limiter: the threads the lookup may use."""
        try:
            secret = secret_from_headers(headers)
            token = await anyio.to_thread.run_sync(_lookup, store, secret, limiter=limiter)
            return self.check(token)
        except AuthFailure as failure:
            await self.fail(failure, client)
            raise

    def check(self, token: AuthToken | None) -> Principal:
        """The principal of a token as looked up; AuthFailure if none, revoked or expired."""
        if token is None:
            raise AuthFailure("an unknown token")
        if token.revoked_at is not None:
            raise AuthFailure("a revoked token", token.id)
        if not token.usable_at(self.clock()):
            raise AuthFailure("an expired token", token.id)
        return Principal(
            token_id=token.id,
            project_id=token.project_id,
            roles=frozenset(token.roles),
            host=token.host,
        )

    async def fail(self, failure: AuthFailure, client: str) -> None:
        """Counts a failure against `client`, logs it, and waits as the throttle decides."""
        state = self.throttle.record_failure(client)
        failure.failures_in_a_row = state.count
        which = f" (token id {failure.token_id})" if failure.token_id else ""
        if state.count <= self.throttle.free_failures:
            log.info("authentication failed from %s: %s%s", client, failure.reason, which)
        elif state.count & (state.count - 1) == 0:  # 8, 16, 32...: the log is not flooded
            log.warning(
                "authentication failed from %s: %s%s; %d failures in a row, answers delayed %.2fs",
                client,
                failure.reason,
                which,
                state.count,
                state.delay,
            )
        if state.delay > 0:
            await self.sleep(state.delay)


def _lookup(store: Store, secret: str) -> AuthToken | None:
    with store.unit_of_work(write=False) as repo:
        return repo.tokens.lookup(secret)


async def _buffered(receive: Receive) -> Receive:
    """The request's body read whole before a write transaction begins (a slow client must not
    hold it, nor SQLite's write lock), then given to the application as it came. A body over
    the size limit (HTTPException 413 from the request-context middleware) is raised again
    when the application reads it, so an unauthenticated request still gets its 401 first."""
    messages: list[Message] = []
    refused: HTTPException | None = None
    while True:
        try:
            message = await receive()
        except HTTPException as exc:
            refused = exc
            break
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        if refused is not None:
            raise refused
        return await receive()

    return replay


class _NotClaimed(Exception):
    """Rolls back a write request's transaction that no route used."""


class AuthenticationMiddleware:
    """Authenticates every HTTP request except the exempt ones, before routing, and puts the
    principal in the request state (`request.state.principal`) for routes and error handlers.

    A failure is answered by the application's handler of CthmError (as Unauthenticated), so
    whatever that handler does for every denial (the audit trail) happens for these too.
    """

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, store: Store) -> None:
        self.app = app
        self.authenticator = authenticator
        self.store = store
        self._begin_threads: anyio.CapacityLimiter | None = None  # made in the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_exempt(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = client_key(client[0] if client else None)
        if scope["method"] not in READ_METHODS:
            await self._write(scope, receive, send, key)
            return
        try:
            principal = await self.authenticator.authenticate(
                self.store, scope.get("headers") or (), key
            )
        except AuthFailure as failure:
            await self._deny(scope, receive, send, failure, key)
            return
        except CthmError as exc:  # the store cannot answer (503): neither yes nor no
            await (await _handled(scope, receive, exc))(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _write(self, scope: Scope, receive: Receive, send: Send, key: str) -> None:
        """A write request is one transaction, its token read in it (HeldUnit): here only the
        token's form is checked; the lookup is the route's first statement, in its thread.
        Whatever answers before the token was read (no route, a refused body, an error) waits
        for the lookup, and a failed one is answered 401 instead: nothing is told to a caller
        not known, and nothing of a route runs before its token is checked."""
        receive = await _buffered(receive)
        try:
            secret = secret_from_headers(scope.get("headers") or ())
        except AuthFailure as malformed:
            await self.authenticator.fail(malformed, key)
            await self._deny(scope, receive, send, malformed, key)
            return
        if self._begin_threads is None:
            self._begin_threads = anyio.CapacityLimiter(BEGIN_THREADS)
        held = HeldUnit(self.store, secret, self.authenticator.check)
        state = scope.setdefault("state", {})
        state[HELD_UNIT] = held
        state[BEGIN_LIMITER] = self._begin_threads
        failure: AuthFailure | None = None
        unavailable: CthmError | None = None

        async def settle() -> bool:
            """Reads the token if nothing has; whether the request's answer may go out."""
            nonlocal failure, unavailable
            if failure is None and unavailable is None and not held.attempted:
                held.attempted = True
                try:
                    token = await anyio.to_thread.run_sync(
                        _lookup, self.store, secret, limiter=self._begin_threads
                    )
                    state["principal"] = self.authenticator.check(token)
                except AuthFailure as exc:
                    failure = exc
                except CthmError as exc:  # neither yes nor no: the 503 is the answer
                    unavailable = exc
            return failure is None and unavailable is None

        async def settled_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not await settle():
                return
            if failure is None and unavailable is None:
                await send(message)

        try:
            await self.app(scope, receive, settled_send)
        except AuthFailure as exc:  # where the token was read: before anything was answered
            failure = exc
        except Exception:
            if await settle():
                raise
            log.info("a request whose token failed raised too", exc_info=True)
        finally:
            # Not claimed by a route (none matched, or the request was refused before it ran):
            # nothing was changed in it; rolled back.
            try:
                await held.end_in_thread(_NotClaimed())
            except CthmError as exc:
                log.warning("rolling back an unused transaction failed: %s", exc.message)
        if failure is not None:
            await self.authenticator.fail(failure, key)
            await self._deny(scope, receive, send, failure, key)
        elif unavailable is not None:
            await (await _handled(scope, receive, unavailable))(scope, receive, send)

    async def _deny(
        self, scope: Scope, receive: Receive, send: Send, failure: AuthFailure, key: str
    ) -> None:
        denied = Unauthenticated(
            token_id=failure.token_id,
            client=key,
            failures_in_a_row=failure.failures_in_a_row,
        )
        response = await _handled(scope, receive, denied)
        response.headers.update(CHALLENGE)
        await response(scope, receive, send)


async def authenticate_write(scope: Scope) -> None:
    """A write route's token, read in its transaction now (a thread hop), for routes that do
    not read it in their own thread (deps.ends_transaction): before anything of theirs runs.
    AuthFailure goes up to the middleware, which answers 401."""
    state = scope.get("state") or {}
    held = state.get(HELD_UNIT)
    if not isinstance(held, HeldUnit) or held.principal is not None:
        return
    principal = await anyio.to_thread.run_sync(held.authenticate, limiter=state[BEGIN_LIMITER])
    state["principal"] = principal


async def _handled(scope: Scope, receive: Receive, error: CthmError) -> Response:
    """The response the application's CthmError handler gives `error` (the Neutron body)."""
    app = scope.get("app")
    handlers = getattr(app, "exception_handlers", {})
    handler = next((handlers[c] for c in type(error).__mro__ if c in handlers), None)
    if handler is None:
        return domain_error_response(error)
    response = await handler(Request(scope, receive), error)
    assert isinstance(response, Response)
    return response


def openapi_security(document: dict[str, Any]) -> None:
    """Declares the two ways to send a token in an OpenAPI document, and the exempt operations."""
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(
        {
            "token": {"type": "apiKey", "in": "header", "name": TOKEN_HEADER},
            "bearer": {"type": "http", "scheme": "bearer"},
        }
    )
    document["security"] = [{"token": []}, {"bearer": []}]
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if is_exempt(method.upper(), path):
                operation["security"] = []


def get_principal(request: Request) -> Principal:
    """Who is calling, as the middleware authenticated them."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):  # a route reached without the middleware: refuse
        raise Unauthenticated()
    return principal
