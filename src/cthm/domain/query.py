"""A list request: filters, sort order and a page, independent of HTTP and SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

DEFAULT_PAGE_LIMIT = 1000
MAX_PAGE_LIMIT = 10000


class SortDir(StrEnum):
    ASC = "asc"
    DESC = "desc"


@dataclass(frozen=True, slots=True)
class ListQuery:
    """filters: field -> accepted values (any of them matches); values are already typed.
    scope: the same form, what the caller may see at all (e.g. its project). It bounds the
    marker as well as the items: a marker outside it is unknown, whatever the filters say."""

    filters: dict[str, tuple[object, ...]] = field(default_factory=dict)
    scope: dict[str, tuple[object, ...]] = field(default_factory=dict)
    sort: tuple[tuple[str, SortDir], ...] = ()
    limit: int | None = None
    marker: str | None = None
    page_reverse: bool = False
