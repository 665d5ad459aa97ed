"""Who is calling: built by authentication from a token, judged by the policy module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """token_id: the token's id (never its secret); roles: cthm.domain.Role values (a Role is
    a str, so plain role names compare equal); host: the one host an agent token may act for
    (None: any)."""

    token_id: str | None
    project_id: str
    roles: frozenset[str]
    host: str | None = None
