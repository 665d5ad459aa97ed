"""Routers by status and bindings by (status, helper): what a metrics scrape shows (cthm.metrics),
one grouped query each, so its cost does not grow with a query per router."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cthm.store.tables import BindingRow, RouterRow


def routers_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(RouterRow.status, func.count()).group_by(RouterRow.status))
    return {str(status): int(count) for status, count in rows}


def bindings_by_status(session: Session) -> dict[tuple[str, str], int]:
    query = select(BindingRow.status, BindingRow.helper, func.count()).group_by(
        BindingRow.status, BindingRow.helper
    )
    return {
        (str(status), str(helper)): int(count) for status, helper, count in session.execute(query)
    }
