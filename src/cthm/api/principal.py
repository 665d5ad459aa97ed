"""Who is calling. Authentication (issue 4) will build this from a token; until then every caller
is the local administrator, which is safe only because the server listens on loopback alone."""

from __future__ import annotations

from dataclasses import dataclass

ADMIN_ROLE = "admin"
MEMBER_ROLE = "member"
READER_ROLE = "reader"

LOCAL_ADMIN_PROJECT = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str | None
    project_id: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


def local_admin() -> Principal:
    return Principal(
        token_id=None,
        project_id=LOCAL_ADMIN_PROJECT,
        roles=frozenset({ADMIN_ROLE, MEMBER_ROLE, READER_ROLE}),
    )
