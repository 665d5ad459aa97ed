"""API tokens. Only a SHA-256 of each secret is stored; the secret is returned once, at creation.

Secrets are 256 random bits, so a fast hash is enough: nothing can be guessed, and the hash only
has to keep a copy of the database from being a list of working tokens.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Table, bindparam, func, literal, select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from cthm.domain import (
    AuthToken,
    InvalidInput,
    LastAdminToken,
    ListQuery,
    Role,
    TokenNotFound,
    parse_roles,
    validate_host,
    validate_name,
    validate_project_id,
)
from cthm.store.listing import apply_query, columns_of
from cthm.store.prepared import Prepared
from cthm.store.tables import RouterRow, TokenRow

SECRET_PREFIX = "cthm_"  # noqa: S105 (marks a string as a cthm token)
SECRET_BYTES = 32  # 256 bits -> 43 urlsafe base64 characters
# PostgreSQL: pg_advisory_xact_lock key ("cthm" + "boot" in ASCII) of `count(exclusive=True)`.
BOOTSTRAP_LOCK_KEY = 0x6374686D_626F6F74
# Every field of a token that a listing may filter or sort on (the hash is never one).
TOKEN_FIELDS = (
    "id",
    "project_id",
    "description",
    "created_at",
    "expires_at",
    "revoked_at",
    "created_by",
)


_TOKENS = cast(Table, TokenRow.__table__)
# Every column but the hash: what _token() reads.
_LOOKUP_STATEMENT = select(*(c for c in _TOKENS.c if c.name != "secret_hash")).where(
    _TOKENS.c.secret_hash == bindparam("b_hash")
)
_LOOKUP = Prepared(_LOOKUP_STATEMENT)


_ROUTERS = cast(Table, RouterRow.__table__)
# The token and, in the same statement, a router by id (its columns as `r_<name>`; NULL if
# none): a write's first two reads in one (Repository.lookup_token).
_LOOKUP_WITH_ROUTER = Prepared(
    select(*_LOOKUP_STATEMENT.selected_columns, *(c.label(f"r_{c.name}") for c in _ROUTERS.c))
    .select_from(_TOKENS.outerjoin(_ROUTERS, _ROUTERS.c.id == bindparam("b_router")))
    .where(_TOKENS.c.secret_hash == bindparam("b_hash"))
)


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _token(row: TokenRow | Row[Any]) -> AuthToken:
    return AuthToken(
        id=row.id,
        project_id=row.project_id,
        roles=frozenset(Role(name) for name in row.roles.split()),
        description=row.description,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_by=row.created_by,
        host=row.host,
    )


def _lasts_as_long(other: AuthToken, target: AuthToken) -> bool:
    if other.expires_at is None:
        return True
    return target.expires_at is not None and other.expires_at >= target.expires_at


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _aware(value: datetime, field: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput("must include a timezone", field=field)
    return value.astimezone(UTC)


class TokenStore:
    """Token rows within one unit of work."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def create(
        self,
        *,
        project_id: str,
        roles: Iterable[Role],
        expires_at: datetime | None = None,
        description: str = "",
        created_by: str | None = None,
        host: str | None = None,
    ) -> tuple[AuthToken, str]:
        """A new token and its secret. The secret is not kept: this is the only time it exists.
        host: the one host an agent token may act for (None: any); whether the roles allow a
        host limit is the caller's rule (the API's)."""
        parsed_roles = parse_roles(list(roles))
        now = datetime.now(UTC)
        row = TokenRow(
            id=str(uuid.uuid4()),
            project_id=validate_project_id(project_id),
            roles=" ".join(sorted(r.value for r in parsed_roles)),
            description=validate_name(description, "description"),
            created_at=now,
            expires_at=None if expires_at is None else _aware(expires_at, "expires_at"),
            revoked_at=None,
            created_by=created_by,
            host=None if host is None else validate_host(host),
        )
        secret = new_secret()
        row.secret_hash = hash_secret(secret)
        self._session.add(row)
        self._session.flush()
        return _token(row), secret

    def lookup(self, secret: str) -> AuthToken | None:
        """The token with this secret, whether usable or not (None: no such token)."""
        # A Core read: every authenticated request makes it.
        row = _LOOKUP.one_or_none(self._session.connection(), {"b_hash": hash_secret(secret)})
        return None if row is None else _token(row)

    def lookup_with_router(self, secret: str, router_id: str) -> tuple[AuthToken | None, Any]:
        """lookup(secret), and the router `router_id`'s row in the same statement: a row whose
        columns are named `r_<column>`, all None if there is no such router (None: no token)."""
        row = _LOOKUP_WITH_ROUTER.one_or_none(
            self._session.connection(), {"b_hash": hash_secret(secret), "b_router": router_id}
        )
        return (None, None) if row is None else (_token(row), row)

    def authenticate(self, secret: str, now: datetime) -> AuthToken | None:
        """The token with this secret if it can be used at `now`; None: unknown, expired or
        revoked (callers must not tell which)."""
        token = self.lookup(secret)
        return token if token is not None and token.usable_at(now) else None

    def get(self, token_id: str) -> AuthToken:
        return _token(self._row(token_id))

    def list(self, query: ListQuery) -> list[AuthToken]:
        statement = apply_query(
            self._session, select(TokenRow), columns_of(TokenRow, TOKEN_FIELDS), query
        )
        return [_token(row) for row in self._session.scalars(statement)]

    def revoke(self, token_id: str, now: datetime, *, force: bool = False) -> AuthToken:
        """Revokes the token from `now` on; a token revoked before keeps its first revocation.

        LastAdminToken (unless `force`) when this would end admin access sooner: the token is
        an active admin token and no other active admin token lasts as long (see
        `_keep_admin_access`)."""
        now = _aware(now, "now")
        row = self._row(token_id)
        if row.revoked_at is None:
            if not force:
                self._keep_admin_access(row, now)
            # Guarded, not `row.revoked_at = now`: of two revocations at once (two replicas),
            # the one committed first keeps its time; the other finds the token revoked.
            self._session.execute(
                update(TokenRow)
                .where(TokenRow.id == row.id, TokenRow.revoked_at.is_(None))
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            )
            self._session.refresh(row)
        return _token(row)

    def active_admins(self, now: datetime, *, lock: bool = False) -> tuple[AuthToken, ...]:
        """The admin tokens usable at `now`. lock: their rows stay locked until the unit of work
        ends (SELECT ... FOR UPDATE where the database has it; SQLite's write transaction is
        BEGIN IMMEDIATE and already excludes every other writer)."""
        statement = select(TokenRow).where(TokenRow.revoked_at.is_(None)).order_by(TokenRow.id)
        if lock:
            # Ordered by id, so two revocations lock in the same order and cannot deadlock; on
            # PostgreSQL the waiting one re-reads the rows, and a row revoked meanwhile drops out.
            statement = statement.with_for_update()
        tokens = (_token(row) for row in self._session.scalars(statement))
        return tuple(t for t in tokens if Role.ADMIN in t.roles and t.usable_at(now))

    def admin_access_end(self, now: datetime) -> datetime | None:
        """When the last active admin token stops working: None if one never expires, `now` if
        none is active (nobody can administer cthm without `cthm token recover`)."""
        ends = [t.expires_at for t in self.active_admins(now)]
        if not ends:
            return now
        if None in ends:
            return None
        return max(e for e in ends if e is not None)

    def _keep_admin_access(self, row: TokenRow, now: datetime) -> None:
        """The rule: a revocation must not bring the end of admin access closer. Revoking an
        active admin token needs another active admin token that lasts at least as long (never
        expires, or expires no earlier). So the last admin token cannot go, and neither can the
        last one without an expiry while the others expire: that would only delay the lockout.

        The check and the revocation are one transaction, with the rows it read locked: two
        concurrent revocations of the last two admin tokens cannot both pass."""
        admins = self.active_admins(now, lock=True)
        target = next((t for t in admins if t.id == row.id), None)
        if target is None:  # not an admin token, or no longer usable: nothing to protect
            return
        others = [t for t in admins if t.id != target.id]
        if any(_lasts_as_long(other, target) for other in others):
            return
        if not others:
            raise LastAdminToken(target.id, "is the last active admin token")
        ends = max(t.expires_at for t in others if t.expires_at is not None)
        lasts = "never expires" if target.expires_at is None else "lasts longest"
        raise LastAdminToken(
            target.id,
            f"is the admin token that {lasts}: without it admin access ends at "
            f"{_iso(ends)}, when the other admin tokens expire",
        )

    def count(self, *, exclusive: bool = False) -> int:
        """How many tokens exist. exclusive: first waits until every other transaction that
        counted so has ended, and holds them off until this one ends (PostgreSQL: a transaction
        advisory lock; SQLite's write transactions exclude each other already). Replicas
        starting together on an empty database then make one first token, not one each."""
        connection = self._session.connection()
        if exclusive and connection.dialect.name == "postgresql":
            connection.execute(
                select(func.pg_advisory_xact_lock(literal(BOOTSTRAP_LOCK_KEY, BigInteger)))
            )
        return int(self._session.scalar(select(func.count()).select_from(TokenRow)) or 0)

    def _row(self, token_id: str) -> TokenRow:
        row = self._session.get(TokenRow, token_id)
        if row is None:
            raise TokenNotFound(token_id)
        return row
