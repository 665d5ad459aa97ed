"""Applies a domain ListQuery to a select: filters, sort order and keyset pagination."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from cthm.domain import InvalidInput, ListQuery, MarkerNotFound, SortDir

Columns = dict[str, InstrumentedAttribute[Any]]


def columns_of(model: type[Any], fields: tuple[str, ...]) -> Columns:
    return {name: getattr(model, name) for name in fields}


def apply_query(
    session: Session, statement: Select[Any], columns: Columns, query: ListQuery
) -> Select[Any]:
    # The caller's scope (the store's own conditions, e.g. one router's bindings, and the
    # query's, e.g. one project): a marker outside it is unknown, or a caller could probe the
    # ids of other routers' and projects' items and, sorting on a field, learn their values.
    for field, values in query.scope.items():
        column = _column(columns, field, "scope")
        statement = statement.where(column.in_([_stored(v) for v in values]))
    scope = statement.whereclause
    for field, values in query.filters.items():
        column = _column(columns, field, "filter")
        statement = statement.where(column.in_([_stored(v) for v in values]))

    sort = [(_column(columns, field, "sort_key"), direction) for field, direction in query.sort]
    id_column = columns["id"]
    if not any(column is id_column for column, _ in sort):
        sort.append((id_column, SortDir.ASC))
    if query.page_reverse:
        sort = [(c, SortDir.DESC if d is SortDir.ASC else SortDir.ASC) for c, d in sort]

    if query.marker is not None:
        lookup = select(*[column for column, _ in sort]).where(id_column == query.marker)
        if scope is not None:
            lookup = lookup.where(scope)
        marker_values = session.execute(lookup).first()
        if marker_values is None:
            raise MarkerNotFound(query.marker)
        statement = statement.where(_after(sort, tuple(marker_values)))

    statement = statement.order_by(*[c.asc() if d is SortDir.ASC else c.desc() for c, d in sort])
    if query.limit is not None:
        statement = statement.limit(query.limit)
    return statement


def _after(
    sort: list[tuple[InstrumentedAttribute[Any], SortDir]], marker: tuple[Any, ...]
) -> ColumnElement[bool]:
    """Rows strictly after the marker row in the sort order (lexicographic keyset condition)."""
    clauses = []
    for index, (column, direction) in enumerate(sort):
        equal_before = [sort[i][0] == marker[i] for i in range(index)]
        beyond = column > marker[index] if direction is SortDir.ASC else column < marker[index]
        clauses.append(and_(*equal_before, beyond))
    return or_(*clauses)


def _column(columns: Columns, field: str, what: str) -> InstrumentedAttribute[Any]:
    column = columns.get(field)
    if column is None:
        raise InvalidInput(
            f"unknown field {field[:40]!r}; known: {', '.join(sorted(columns))}", field=what
        )
    return column


def _stored(value: object) -> object:
    # Enums are stored by value; everything else is already the column's Python type.
    return getattr(value, "value", value)
