"""API tokens: only hashes are stored. (Being built for issue 4.)"""

from __future__ import annotations

from sqlalchemy.orm import Session


class TokenStore:
    """Token rows within one unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session
