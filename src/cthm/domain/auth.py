"""Roles and API tokens as values. Secrets never live here: only the store's hash does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cthm.domain.errors import Conflict, InvalidInput, NotFound


class Role(StrEnum):
    ADMIN = "admin"  # everything, every project
    MEMBER = "member"  # manage bindings on routers of its own project, read them
    READER = "reader"  # read its own project
    AGENT = "agent"  # read desired state, write status; nothing else


def parse_roles(values: object, field: str = "roles") -> frozenset[Role]:
    if not isinstance(values, list | tuple | set | frozenset) or not values:
        raise InvalidInput("must be a non-empty list of roles", field=field)
    roles = set()
    for value in values:
        try:
            roles.add(Role(value))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise InvalidInput(
                f"{str(value)[:40]!r} is not a role ({known})", field=field
            ) from None
    return frozenset(roles)


@dataclass(frozen=True, slots=True)
class AuthToken:
    """An API token's public facts (its id is not a secret; the token itself is)."""

    id: str
    project_id: str
    roles: frozenset[Role]
    description: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_by: str | None = None
    host: str | None = None  # an agent token limited to this host (None: any host)

    def usable_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class TokenNotFound(NotFound):
    kind = "AuthTokenNotFound"

    def __init__(self, token_id: str) -> None:
        super().__init__(f"Auth token {token_id} could not be found")
        self.token_id = token_id


class LastAdminToken(Conflict):
    """Revoking this token would end admin access sooner, or at once: no other active admin
    token lasts as long as it does. Refused unless forced."""

    kind = "LastAdminToken"

    def __init__(self, token_id: str, reason: str) -> None:
        super().__init__(
            f"Auth token {token_id} {reason}. Create another admin token first, or force it "
            "(?force=true; cthm token revoke --force); `cthm token recover` on the server's "
            "host makes a new admin token"
        )
        self.token_id = token_id
