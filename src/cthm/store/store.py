"""The store: engine, migrations, one transaction per unit of work, change notification."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from cthm.domain import Conflict, Unavailable
from cthm.store.audit import AuditContext, Outcome, emit
from cthm.store.engine import WRITE_OPTION, make_engine
from cthm.store.repository import Repository

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
ChangeCallback = Callable[[frozenset[str]], None]


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = make_engine(url)
        self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
        self._subscribers: list[ChangeCallback] = []
        self._file_identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def migrate(self, revision: str = "head") -> None:
        """Upgrades the schema to `revision` (idempotent)."""
        self._run_migration(command.upgrade, revision)

    def downgrade(self, revision: str) -> None:
        self._run_migration(command.downgrade, revision)

    def _run_migration(self, action: Callable[[Config, str], None], revision: str) -> None:
        try:
            with self._write_engine.connect() as connection:
                config = alembic_config()
                config.attributes["connection"] = connection
                action(config, revision)
                connection.commit()
        except SQLAlchemyError as exc:
            raise Unavailable(f"cannot migrate the database: {_describe(exc)}") from exc

    def subscribe(self, callback: ChangeCallback) -> None:
        with self._lock:
            self._subscribers.append(callback)

    @contextmanager
    def unit_of_work(
        self, *, write: bool = True, audit: AuditContext | None = None
    ) -> Iterator[Repository]:
        """One transaction. Commits on normal exit, rolls back on any exception.

        write=False is for read-only requests: on SQLite they do not take the write lock.
        audit: who acts; changes made through the repository are recorded in this transaction.
        """
        engine = self._write_engine if write else self._engine
        try:
            with Session(engine, expire_on_commit=False) as session:
                repository = Repository(session, audit)
                try:
                    yield repository
                    if write:
                        self._check_file()  # never acknowledge a write into a vanished file
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise
        except IntegrityError as exc:
            # The repository checks constraints first; one that still fires lost a race.
            raise Conflict("a concurrent change conflicted with this one; retry") from exc
        except DBAPIError as exc:
            log.error("database error: %s", exc.__class__.__name__, exc_info=exc)
            raise Unavailable(_describe(exc)) from exc
        # After the commit, never before: a log line must not tell of a change that was undone.
        emit(repository.audit.committed_events())
        if repository.changed_routers:
            self._notify(frozenset(repository.changed_routers))

    def record_denied(
        self,
        context: AuditContext,
        *,
        action: str,
        target_type: str,
        target_id: str | None,
        target_project_id: str | None,
        status_code: int,
        detail: str = "",
    ) -> None:
        """Records a denied attempt in a short transaction of its own (the attempt's own, if it
        had one, was rolled back: nothing changed). Logged as soon as it is committed."""
        with self.unit_of_work(write=True, audit=context) as repository:
            repository.audit.record(
                action=action,
                target_type=target_type,
                target_id=target_id,
                target_project_id=target_project_id,
                before=None,
                after=None,
                outcome=Outcome.DENIED,
                status_code=status_code,
                detail=detail,
            )

    def _sqlite_path(self) -> Path | None:
        database = self._engine.url.database
        if self._engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
            return None
        return Path(str(database).removeprefix("file:").split("?", 1)[0])

    def _check_file(self) -> None:
        """Pooled connections keep an unlinked (or replaced) SQLite file working: writes would
        be acknowledged into a file no restart can find. Refuse them, and drop the pool so a
        restored file is opened afresh."""
        path = self._sqlite_path()
        if path is None:
            return
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._engine.dispose()
            raise Unavailable("the database file is missing") from None
        identity = (stat.st_dev, stat.st_ino)
        if self._file_identity is None:
            self._file_identity = identity
        elif identity != self._file_identity:
            self._engine.dispose()
            self._file_identity = identity
            raise Unavailable("the database file was replaced; retry")

    def check_health(self) -> None:
        self._check_file()
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise Unavailable(_describe(exc)) from exc

    def close(self) -> None:
        self._engine.dispose()

    def _notify(self, router_ids: frozenset[str]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(router_ids)
            except Exception:  # a subscriber's bug must not turn a committed change into an error
                log.exception("change subscriber failed")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _describe(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", exc)) or exc.__class__.__name__
    if "readonly" in text_ or "read-only" in text_:
        return "the database is read-only"
    if "disk is full" in text_ or "disk I/O error" in text_:
        return "the database disk is full or failing; nothing was written"
    if "locked" in text_:
        return "the database is busy; retry"
    return "the database is unavailable"
