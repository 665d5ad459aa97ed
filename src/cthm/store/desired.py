"""Desired bindings out of narrow database rows: the agents' hot path (no ORM entities, no
datetime parsing), shared by the local store source and the hosts' views."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby
from operator import itemgetter
from typing import Any

from cthm.domain import Direction, HelperBinding, Protocol, Status, restore_binding_fields

_PROTOCOLS = {p.value: p for p in Protocol}
_DIRECTIONS = {d.value: d for d in Direction}
_STATUSES = {s.value: s for s in Status}


def binding_row_problem(protocol: object, port: object, helper: object, direction: object) -> str:
    if not isinstance(protocol, str) or protocol not in _PROTOCOLS:
        return f"refused: invalid protocol {str(protocol)[:20]!r} in the database"
    if type(port) is not int or not 1 <= port <= 65535:
        return f"refused: invalid port {str(port)[:20]!r} in the database"
    if not isinstance(helper, str):
        return "refused: invalid helper in the database"
    if not isinstance(direction, str) or direction not in _DIRECTIONS:
        return f"refused: invalid direction {str(direction)[:20]!r} in the database"
    return ""


def restore_desired(
    router_id: str, rows: Iterable[Any]
) -> tuple[list[HelperBinding], list[tuple[str, int, str]]]:
    """rows: (id, project_id, protocol, port, helper, direction, status, status_reason,
    revision_number). The bindings, and the rows that fail the checks as (binding id, revision,
    reason). Rows were validated when written; these cheap checks are defence in depth against a
    database edited behind the API's back (the helper name is checked against the catalog later)."""
    bindings: list[HelperBinding] = []
    rejected: list[tuple[str, int, str]] = []
    append = bindings.append
    protocols, directions, statuses, pending = _PROTOCOLS, _DIRECTIONS, _STATUSES, Status.PENDING
    for b_id, project_id, protocol, port, helper, direction, status, reason, revision in rows:
        # binding_row_problem()'s checks inline (a thousand rows a router); its message only
        # for a row that fails them. Only a str equals a str key (values a database returns
        # are hashable).
        if (
            protocol in protocols
            and direction in directions
            and type(port) is int
            and 1 <= port <= 65535
            and isinstance(helper, str)
        ):
            append(
                restore_binding_fields(
                    b_id,
                    router_id,
                    project_id,
                    protocols[protocol],
                    port,
                    helper,
                    directions[direction],
                    statuses.get(status, pending),
                    reason,
                    revision,
                    None,
                    None,
                )
            )
        else:
            rejected.append(
                (b_id, revision, binding_row_problem(protocol, port, helper, direction))
            )
    return bindings, rejected


def restore_all_desired(
    rows: Iterable[Any],
) -> dict[str, tuple[list[HelperBinding], list[tuple[str, int, str]]]]:
    """rows: (router_id, then restore_desired's columns), ordered by router id first. Router id
    -> restore_desired() of its rows (routers without bindings are absent)."""
    return {
        router_id: restore_desired(router_id, (row[1:] for row in group))
        for router_id, group in groupby(rows, key=itemgetter(0))
    }
