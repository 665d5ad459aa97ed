"""The audit trail: who changed what, and who was denied. (Being built for issue 4.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who is acting in this unit of work. Never carries a token secret."""

    request_id: str
    token_id: str | None
    project_id: str | None


class AuditLog:
    """Audit rows of one unit of work, written in its transaction."""

    def __init__(self, session: Session, context: AuditContext | None) -> None:
        self._session = session
        self.context = context

    def record(
        self,
        *,
        action: str,
        target_type: str,
        target_id: str | None,
        target_project_id: str | None,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        outcome: str = "success",
        status_code: int = 200,
        detail: str = "",
    ) -> None:
        """Placeholder until the audit trail lands: records nothing yet."""
