"""The store: engine, migrations, one transaction per unit of work, change notification."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from cthm.domain import Conflict, Unavailable
from cthm.store.audit import AuditContext, Outcome, emit
from cthm.store.audit_writer import DeniedEvent, DeniedEventWriter
from cthm.store.engine import WRITE_OPTION, make_engine
from cthm.store.repository import Repository
from cthm.store.sqlite_file import SqliteFile

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
ChangeCallback = Callable[[frozenset[str]], None]


class Store:
    def __init__(self, url: str, *, change_history: int = 10000) -> None:
        self.url = url
        # Change-log entries kept for watchers (settings.watch_history); settable.
        self.change_history = change_history
        self._file = _sqlite_file(url)
        self._engine = make_engine(url, self._file)
        self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
        self._subscribers: list[ChangeCallback] = []
        self._lock = threading.Lock()
        # Denied attempts are committed in the background (see audit_writer: a denial must not
        # cost its request more than an unknown id does).
        self.denied_writer = DeniedEventWriter(self.record_denied_batch)

    def migrate(self, revision: str = "head") -> None:
        """Upgrades the schema to `revision` (idempotent). The first one creates the SQLite
        file; nothing else ever does (see sqlite_file)."""
        if self._file is not None:
            self._file.create_if_missing()
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
        self._check_file()  # before any connection: never open, nor use, a file not ours
        try:
            with Session(engine, expire_on_commit=False) as session:
                repository = Repository(session, audit, change_history=self.change_history)
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

    def submit_denied(
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
        """Records a denied attempt without waiting for the database: queued now, committed by
        the background writer within a tick (or by `flush_denied`, or `close`)."""
        event = DeniedEvent(
            context=context,
            time=datetime.now(UTC),
            action=action,
            target_type=target_type,
            target_id=target_id,
            target_project_id=target_project_id,
            status_code=status_code,
            detail=detail,
        )
        if not self.denied_writer.submit(event) and self.denied_writer.closed:
            # Only after close (nothing serves requests then): write it in place, not lose it.
            self.record_denied_batch([event])

    def flush_denied(self, timeout: float = 5.0) -> bool:
        """Waits until every denied attempt submitted so far is committed; False on timeout."""
        return self.denied_writer.flush(timeout)

    def record_denied_batch(self, events: Sequence[DeniedEvent]) -> None:
        """Denied attempts, each with its own caller and time, in one transaction."""
        with self.unit_of_work(write=True) as repository:
            for event in events:
                repository.audit.record(
                    action=event.action,
                    target_type=event.target_type,
                    target_id=event.target_id,
                    target_project_id=event.target_project_id,
                    before=None,
                    after=None,
                    outcome=Outcome.DENIED,
                    status_code=event.status_code,
                    detail=event.detail,
                    context=event.context,
                    time=event.time,
                )

    def save_denied_summary(
        self,
        context: AuditContext,
        *,
        event_id: str,
        time: datetime,
        action: str,
        target_type: str,
        status_code: int,
        detail: str,
        after: dict[str, Any],
    ) -> None:
        """Writes a summary of repeated denials as one event `event_id`: created the first time,
        its `after` and `detail` rewritten each later time (the count grows, the row does not
        multiply). Logged as soon as it is committed, each time."""
        with self.unit_of_work(write=True) as repository:
            if not repository.audit.update_summary(event_id, after=after, detail=detail):
                repository.audit.record(
                    action=action,
                    target_type=target_type,
                    target_id=None,
                    target_project_id=None,
                    before=None,
                    after=after,
                    outcome=Outcome.DENIED,
                    status_code=status_code,
                    detail=detail,
                    context=context,
                    time=time,
                    event_id=event_id,
                )

    def _check_file(self) -> None:
        """Pooled connections keep a moved, unlinked or replaced SQLite file working: writes
        would be acknowledged into a file no restart finds, and a new connection would create
        an empty file that makes SQLite delete the WAL. Refuse everything until the file is
        back; close nothing (the pool stays as it is, so no close touches the moved files)."""
        if self._file is not None:
            self._file.check()

    def check_health(self) -> None:
        self._check_file()
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise Unavailable(_describe(exc)) from exc

    def close(self) -> None:
        """Commits the denied attempts still queued, then closes the connections."""
        self.denied_writer.close()
        self._engine.dispose()

    def _notify(self, router_ids: frozenset[str]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(router_ids)
            except Exception:  # a subscriber's bug must not turn a committed change into an error
                log.exception("change subscriber failed")


def _sqlite_file(url: str) -> SqliteFile | None:
    """The file an SQLite URL names (plain path or `file:` URI); None for other databases and
    for in-memory SQLite."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return None
    return SqliteFile(Path(str(database).removeprefix("file:").split("?", 1)[0]))


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
