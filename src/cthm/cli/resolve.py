"""ROUTER arguments: a router id or a router name, resolved to one router."""

from __future__ import annotations

import uuid

from cthm.cli.client import ClientError, CthmClient, JSONObject

MAX_IDS_SHOWN = 5


def resolve_router(client: CthmClient, ref: str) -> JSONObject:
    """The router whose id is `ref`, else the only router named `ref`.

    An id wins over a name (as openstackclient does); a name shared by several routers is an
    error that lists their ids, so the user can pick one.
    """
    not_found: ClientError | None = None
    if _is_uuid(ref):
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


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) in (32, 36)
