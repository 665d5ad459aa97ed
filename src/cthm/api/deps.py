"""What a route needs, as named dependencies, so a route's signature declares it.

The principal comes from authentication (cthm.api.auth): `PrincipalDep` is who is calling.
"""

from __future__ import annotations

import email.message
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast

import anyio
import anyio.to_thread
from fastapi import Depends, Header, Request

from cthm.api.auth import HELD_UNIT, HeldUnit, get_principal
from cthm.api.principal import Principal
from cthm.api.query import Params, reject_query
from cthm.domain import HelperCatalog, InvalidInput, Protocol
from cthm.settings import Settings
from cthm.store import AuditContext, Repository, Store

HelperAvailability = Callable[[], Mapping[tuple[str, Protocol], bool]]
_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])

# The small dependencies below are `async def` although they never wait: FastAPI runs a plain
# `def` dependency in its thread pool, and a thread hop each (8 on a create) cost more than
# the whole database transaction.

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What create_app was given, kept on the application (never in module globals)."""

    settings: Settings
    store: Store
    catalog: HelperCatalog
    helper_availability: HelperAvailability | None


async def get_context(request: Request) -> ApiContext:
    context = request.app.state.cthm
    assert isinstance(context, ApiContext)
    return context


ContextDep = Annotated[ApiContext, Depends(get_context)]


async def get_settings(context: ContextDep) -> Settings:
    return context.settings


async def get_store(context: ContextDep) -> Store:
    return context.store


async def get_catalog(context: ContextDep) -> HelperCatalog:
    return context.catalog


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
CatalogDep = Annotated[HelperCatalog, Depends(get_catalog)]


async def get_caller(request: Request) -> Principal:
    return get_principal(request)


PrincipalDep = Annotated[Principal, Depends(get_caller)]


async def get_repository(request: Request) -> AsyncIterator[Repository]:
    """One unit of work per request: committed before the response is sent, rolled back if the
    request fails, so a failed request leaves the database as it was. Changes made through it
    are audited in the same transaction, under the caller's identity.

    A write request's unit was begun by the authentication middleware, which read the token in
    it (auth.HeldUnit): one transaction per write. A read request's is begun here."""
    # The principal and (below) the store read here, not as dependencies of this one: FastAPI
    # solves every dependency of the tree on each request (~50 us each), and every route
    # takes this one.
    principal = get_principal(request)
    audit = AuditContext(
        request_id=getattr(request.state, "request_id", ""),
        token_id=principal.token_id,
        project_id=principal.project_id,
    )
    held = request.scope.get("state", {}).get(HELD_UNIT)
    repository = held.claim() if isinstance(held, HeldUnit) else None
    if held is not None and repository is not None:
        repository.audit.context = audit
        _ending.set(held)  # for a route that commits in its own thread (ends_transaction)
        try:
            yield repository
        except BaseException as exc:
            await held.end_in_thread(exc)
            raise
        finally:
            _ending.set(None)
        await held.end_in_thread()  # nothing left to do if the route committed it
        return
    store = (await get_context(request)).store
    unit = store.unit_of_work(write=request.method not in _READ_METHODS, audit=audit)
    repository = await anyio.to_thread.run_sync(unit.__enter__)
    try:
        yield repository
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                unit.__exit__, type(exc), exc, exc.__traceback__, limiter=anyio.CapacityLimiter(1)
            )
        raise
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(
            unit.__exit__, None, None, None, limiter=anyio.CapacityLimiter(1)
        )


_ending: ContextVar[HeldUnit | None] = ContextVar("cthm_ending", default=None)


def ends_transaction(endpoint: _Endpoint) -> _Endpoint:
    """For a write route (a plain `def`, run in a worker thread): its request's transaction is
    committed in that thread as the route returns, not in one more thread hop after it. The
    transaction is SQLite's write lock: a hop (and the event loop's turn) fewer while holding
    it. A commit that fails is raised by the route, so it is still the response."""

    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> Any:
        result = endpoint(*args, **kwargs)
        held = _ending.get()
        if held is not None:
            held.end()
        return result

    return cast(_Endpoint, run)


# scope="function": the transaction ends (commit or rollback) before the response goes out, so
# a commit that fails becomes the response instead of being lost after a 2xx was sent.
RepoDep = Annotated[Repository, Depends(get_repository, scope="function")]


async def get_query_params(request: Request) -> Params:
    return request.query_params.multi_items()


QueryDep = Annotated[Params, Depends(get_query_params)]


async def no_query(request: Request) -> None:
    """For requests that take no query parameters: any is refused."""
    reject_query(await get_query_params(request))


async def require_json_body(request: Request) -> None:
    """Requests with a body must say it is JSON (Content-Type: application/json)."""
    if request.method not in _BODY_METHODS:
        return
    value = request.headers.get("content-type")
    if not value:
        raise InvalidInput("Content-Type is missing; send the body as application/json")
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        raise InvalidInput("Content-Type must be application/json")


async def get_if_match_revision(
    if_match: Annotated[
        str | None,
        Header(
            description="revision_number=N: act only if the object is still at revision N "
            "(Neutron's If-Match); other entries are ignored"
        ),
    ] = None,
) -> int | None:
    if if_match is None:
        return None
    revisions = []
    for entry in if_match.split(","):
        key, sep, value = entry.strip().partition("=")
        if sep and key.strip() == "revision_number":
            text = value.strip()
            if not text.isascii() or not text.isdigit() or len(text) > 18:
                raise InvalidInput("revision_number must be a non-negative integer", "If-Match")
            revisions.append(int(text))
    if len(revisions) > 1:
        raise InvalidInput("give revision_number once", field="If-Match")
    return revisions[0] if revisions else None


IfMatchDep = Annotated[int | None, Depends(get_if_match_revision)]
