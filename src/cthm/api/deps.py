"""What a route needs, as named dependencies, so a route's signature declares it.

The principal comes from authentication (cthm.api.auth): `PrincipalDep` is who is calling.
"""

from __future__ import annotations

import email.message
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast, overload

import anyio
import anyio.to_thread
from fastapi import Depends, Header, Request

from cthm.api.auth import HELD_UNIT, HeldUnit, authenticate_write, get_principal
from cthm.api.errors import Unauthenticated
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
        try:
            yield repository
        except BaseException as exc:
            await held.end_in_thread(exc)
            raise
        await held.end_in_thread()
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


# scope="function": the transaction ends (commit or rollback) before the response goes out, so
# a commit that fails becomes the response instead of being lost after a 2xx was sent.
RepoDep = Annotated[Repository, Depends(get_repository, scope="function")]


# The request, as a parameter only ends_transaction's wrapper takes (not the route's own).
_REQUEST_PARAMETER = "cthm_request"
# Marks a route wrapped by ends_transaction: its token is read in its own thread.
_IN_ITS_THREAD = "cthm_authenticates_in_its_thread"


@overload
def ends_transaction(endpoint: _Endpoint, /) -> _Endpoint: ...
@overload
def ends_transaction(*, router: str) -> Callable[[_Endpoint], _Endpoint]: ...
def ends_transaction(
    endpoint: _Endpoint | None = None, /, *, router: str | None = None
) -> _Endpoint | Callable[[_Endpoint], _Endpoint]:
    """For a write route (a plain `def`, run in a worker thread) taking `RepoDep` (and maybe
    `PrincipalDep`, `ContextDep`), and no query (refused as `no_query` does, by before_route):
    its whole transaction runs in that one thread: begun there, the token read
    in it as its first statement (auth.HeldUnit), then the route, then the commit as it returns.
    One thread hop per write instead of two (the token's, then the route's and its commit's);
    the transaction (SQLite's write lock) is not held while the event loop routes the request
    and solves its dependencies. FastAPI resolves
    none of those three for it: this wrapper gives them to the route. A token that fails
    raises AuthFailure (the middleware answers 401); a commit that fails is raised by the
    route, so it is still the response.

    router: the name of the path parameter naming the router the route reads first
    (`load_router`), read in the token's statement: one statement fewer."""
    if endpoint is None:
        return functools.partial(_ends_transaction, router=router)
    return _ends_transaction(endpoint, router=router)


def _ends_transaction(endpoint: _Endpoint, router: str | None) -> _Endpoint:
    """ends_transaction's wrapper."""
    signature = inspect.signature(endpoint, eval_str=True)
    if router is not None and router not in signature.parameters:
        raise TypeError(f"{endpoint.__name__} has no parameter {router!r}")
    names = {
        parameter.annotation: name
        for name, parameter in signature.parameters.items()
        if any(parameter.annotation is given for given in (RepoDep, PrincipalDep, ContextDep))
    }
    repo_name, principal_name = names.get(RepoDep), names.get(PrincipalDep)
    context_name = names.get(ContextDep)
    if repo_name is None:
        raise TypeError(f"{endpoint.__name__}: ends_transaction needs a RepoDep parameter")
    own = [p for p in signature.parameters.values() if p.name not in names.values()]
    # FastAPI gives one parameter the request: the route's own, if it takes it.
    request_name = next((p.name for p in own if p.annotation is Request), None)
    if request_name is None:
        own.append(
            inspect.Parameter(
                _REQUEST_PARAMETER, inspect.Parameter.KEYWORD_ONLY, annotation=Request
            )
        )

    @functools.wraps(endpoint)
    def run(*args: Any, **kwargs: Any) -> Any:
        if request_name is None:
            request: Request = kwargs.pop(_REQUEST_PARAMETER)
        else:
            request = kwargs[request_name]
        held = request.scope.get("state", {}).get(HELD_UNIT)
        if not isinstance(held, HeldUnit):  # a route reached without the middleware: refuse
            raise Unauthenticated()
        principal = held.authenticate(None if router is None else kwargs[router])
        request.state.principal = principal  # for the error handlers' audit of a denial
        repository = held.claim()
        if repository is None:
            raise RuntimeError("the request's transaction was claimed before its route ran")
        repository.audit.context = AuditContext(
            request_id=getattr(request.state, "request_id", ""),
            token_id=principal.token_id,
            project_id=principal.project_id,
        )
        kwargs[repo_name] = repository
        if principal_name is not None:
            kwargs[principal_name] = principal
        if context_name is not None:
            kwargs[context_name] = request.app.state.cthm
        try:
            result = endpoint(*args, **kwargs)
        except BaseException as exc:
            held.end(exc)
            raise
        held.end()
        return result

    run.__signature__ = signature.replace(parameters=own)  # type: ignore[attr-defined]
    setattr(run, _IN_ITS_THREAD, True)
    return cast(_Endpoint, run)


async def get_query_params(request: Request) -> Params:
    return request.query_params.multi_items()


QueryDep = Annotated[Params, Depends(get_query_params)]


async def no_query(request: Request) -> None:
    """For requests that take no query parameters: any is refused."""
    reject_query(await get_query_params(request))


async def before_route(request: Request) -> None:
    """Every route's first dependency: a write's token is read now, before anything of the
    route runs, unless the route reads it itself, first thing in its own thread
    (ends_transaction); then the body's type, and for those routes, that no query is given
    (as `no_query`: a dependency solved costs ~50 us)."""
    if request.method in _READ_METHODS:
        return
    in_its_thread = getattr(request.scope.get("endpoint"), _IN_ITS_THREAD, False)
    if not in_its_thread:
        await authenticate_write(request.scope)
    require_json_body(request)
    if in_its_thread and request.scope.get("query_string"):
        reject_query(request.query_params.multi_items())


def require_json_body(request: Request) -> None:
    """Requests with a body must say it is JSON (Content-Type: application/json)."""
    if request.method not in _BODY_METHODS:
        return
    value = request.headers.get("content-type")
    if value == "application/json":  # what nearly every client sends: no parsing
        return
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
