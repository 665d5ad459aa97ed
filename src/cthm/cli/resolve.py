"""ROUTER arguments: a router id or a router name, resolved to one router; a router's
conntrack helper by id, id prefix or PROTOCOL/PORT[/DIRECTION]."""

from __future__ import annotations

import re
import uuid

import click
from click.shell_completion import CompletionItem

from cthm.cli.client import DEFAULT_URL, ClientError, CthmClient, JSONObject
from cthm.cli.context import CliState

MAX_IDS_SHOWN = 5


def resolve_router(client: CthmClient, ref: str) -> JSONObject:
    """The router whose id is `ref`, else the only router named `ref`.

    An id wins over a name (as openstackclient does); a name shared by several routers is an
    error that lists their ids, so the user can pick one.
    """
    not_found: ClientError | None = None
    if is_uuid(ref):
        try:
            return client.get_router(ref)
        except ClientError as exc:
            if exc.status != 404:
                raise
            not_found = exc
    # The server filters by name; compare again so a server that ignores the filter cannot make
    # us act on the wrong router.
    matches = [r for r in client.list_routers(name=ref) if r.get("name") == ref]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        if not_found is not None:
            raise not_found
        raise ClientError(None, "RouterNotFound", f"no router has the id or name {ref!r}")
    ids = ", ".join(str(r.get("id")) for r in matches[:MAX_IDS_SHOWN])
    more = ", ..." if len(matches) > MAX_IDS_SHOWN else ""
    raise ClientError(
        None,
        "AmbiguousRouterName",
        f"{len(matches)} routers are named {ref!r} ({ids}{more}); give the router id",
    )


def is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) in (32, 36)


_PORT_REF = re.compile(r"(?P<protocol>[A-Za-z]+)/(?P<port>\d{1,5})(?:/(?P<direction>[A-Za-z]+))?")


def resolve_binding(client: CthmClient, router: JSONObject, ref: str) -> JSONObject:
    """The conntrack helper of `router` that `ref` names: its id, a unique prefix of its id, or
    PROTOCOL/PORT[/DIRECTION] (`tcp/21`, `tcp/21/output`; any case). A ref naming several is
    an error listing them; errors name the router by its name and id."""
    router_id = str(router["id"])
    if is_uuid(ref):
        try:
            return client.get_helper(router_id, ref)
        except ClientError as exc:
            if exc.status != 404:
                raise
            raise ClientError(
                404, exc.type, f"router {router_label(router)} has no conntrack helper {ref}"
            ) from None
    bindings = client.list_helpers(router_id)
    found = _PORT_REF.fullmatch(ref)
    if found is not None:
        protocol, port = found["protocol"].lower(), int(found["port"])
        direction = (found["direction"] or "").lower()
        matches = [
            b
            for b in bindings
            if b.get("protocol") == protocol
            and b.get("port") == port
            and direction in ("", b.get("direction"))
        ]
        what = f"matching {ref}"
    else:
        matches = [b for b in bindings if str(b.get("id", "")).startswith(ref.lower())]
        what = f"whose id starts with {ref!r}"
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ClientError(
            None, "BindingNotFound", f"router {router_label(router)} has no conntrack helper {what}"
        )
    shown = ", ".join(_binding_label(b) for b in matches[:MAX_IDS_SHOWN])
    more = ", ..." if len(matches) > MAX_IDS_SHOWN else ""
    raise ClientError(
        None,
        "AmbiguousBinding",
        f"{len(matches)} conntrack helpers of router {router_label(router)} are {what} "
        f"({shown}{more}); give more of the id or PROTOCOL/PORT/DIRECTION",
    )


def router_label(router: JSONObject) -> str:
    name = router.get("name")
    return f"{name} ({router['id']})" if name else str(router["id"])


def _binding_label(binding: JSONObject) -> str:
    where = f"{binding.get('protocol')}/{binding.get('port')}/{binding.get('direction')}"
    return f"{binding.get('id')} {where} {binding.get('helper')}"


COMPLETION_TIMEOUT = 2.0  # seconds: a shell waiting on a <Tab> must not hang


def complete_router(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Router names (and ids) for shell completion of a ROUTER argument, from the server the
    command line points at; nothing at all when it cannot be asked (no error in a shell)."""
    given = ctx.find_root().params
    state = CliState(
        url=given.get("url") or DEFAULT_URL,
        timeout=COMPLETION_TIMEOUT,
        token=given.get("token"),
        data_dir=given.get("data_dir"),
    )
    try:
        with state.client() as client:
            routers = client.list_routers()
    except Exception:  # noqa: BLE001 (completion never fails loudly)
        return []
    words = sorted({str(r.get(key)) for r in routers for key in ("name", "id") if r.get(key)})
    return [CompletionItem(word) for word in words if word.startswith(incomplete)]
