"""The store: engine, migrations, one transaction per unit of work, change notification."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from cthm.domain import Conflict, CthmError, Unavailable
from cthm.store.audit import AuditContext, Outcome, emit
from cthm.store.audit_writer import DeniedEvent, DeniedEventWriter
from cthm.store.engine import DURABLE_OPTION, WRITE_OPTION, make_engine
from cthm.store.repository import Repository
from cthm.store.revisions import RevisionNotes
from cthm.store.sqlite_file import SqliteFile
from cthm.store.writer_turns import WriterTurns

if TYPE_CHECKING:
    from cthm.store.listener import ChangeListener

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_lock key held while migrating (any fixed 64-bit number: "cthm" + "migr" in ASCII),
# so replicas starting together migrate once: the others wait, then find the schema at head.
MIGRATION_LOCK_KEY = 0x6374686D_6D696772
ChangeCallback = Callable[[frozenset[str]], None]
# Seconds a SQLite writer waits for its turn in this process (as busy_timeout in engine.py).
WRITER_TURN_TIMEOUT = 30.0


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
        # Which binding each revision committed here changed (store/revisions.py).
        self.revision_notes = RevisionNotes()
        # SQLite's writers queue, in this process and with other processes on the same file
        # (writer_turns). Not bound to a thread: a unit of work may end in another thread than
        # the one that began it (an API write request's runs in three).
        self._sqlite_writers = (
            WriterTurns(self._file.path if self._file is not None else None)
            if make_url(url).get_backend_name() == "sqlite"
            else None
        )
        # PostgreSQL: LISTEN for the commits of every process (started by the first subscribe),
        # and the newest revision the subscribers were told of through it.
        self._listener: ChangeListener | None = None
        self._told_revision: int | None = None
        # Whether a subscriber needs to know which routers other processes changed (an agent);
        # the API's watches read again by revision themselves and need only the wake-up.
        self._router_ids_wanted = False
        self._committing: set[tuple[int, int]] = set()  # this process's, being committed
        # Denied attempts are committed in the background (see audit_writer: a denial must not
        # cost its request more than an unknown id does).
        self.denied_writer = DeniedEventWriter(self.record_denied_batch)

    @property
    def dialect(self) -> str:
        """The database: "sqlite" or "postgresql"."""
        return self._engine.dialect.name

    def migrate(self, revision: str = "head") -> None:
        """Upgrades the schema to `revision` (idempotent). The first one creates the SQLite
        file; nothing else ever does (see sqlite_file). On PostgreSQL, processes migrating at
        once (replicas starting together) take turns: the later ones find nothing to do."""
        if self._file is not None:
            self._file.create_if_missing()
        self._run_migration(command.upgrade, revision)

    def downgrade(self, revision: str) -> None:
        self._run_migration(command.downgrade, revision)

    def current_revision(self) -> str | None:
        """The schema's revision (None: an empty database, never migrated)."""
        try:
            with self._engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        except SQLAlchemyError as exc:
            raise Unavailable(_describe(exc)) from exc

    def _run_migration(self, action: Callable[[Config, str], None], revision: str) -> None:
        try:
            with self._write_engine.connect() as connection:
                locked = self.dialect == "postgresql"
                if locked:
                    # A session lock, taken before alembic reads the version: the process
                    # that waited reads the winner's committed version (READ COMMITTED).
                    connection.execute(
                        text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                try:
                    config = alembic_config()
                    config.attributes["connection"] = connection
                    action(config, revision)
                    connection.commit()
                finally:
                    if locked:
                        _unlock_migrations(connection)
        except SQLAlchemyError as exc:
            raise Unavailable(f"cannot migrate the database: {_describe(exc)}") from exc

    def subscribe(self, callback: ChangeCallback, *, router_ids: bool = True) -> None:
        """callback(router ids) after each commit that changed routers, in the committing
        thread. On PostgreSQL also from the listener's thread, for the commits of every process
        on the database (other replicas'; this one's a second time): see _changed_anywhere.

        router_ids=False: the callback ignores which routers changed. While no subscriber
        wants them, another process's commit wakes the subscribers (with no router) without
        reading the change log: a replica without an agent pays nothing per other replica's
        write."""
        with self._lock:
            self._subscribers.append(callback)
            self._router_ids_wanted = self._router_ids_wanted or router_ids
            if self._listener is None and self.dialect == "postgresql":
                from cthm.store.listener import ChangeListener  # psycopg: PostgreSQL only

                self._listener = ChangeListener(self.url, self._changed_anywhere)
                self._listener.start()

    @contextmanager
    def unit_of_work(
        self, *, write: bool = True, audit: AuditContext | None = None, durable: bool = True
    ) -> Iterator[Repository]:
        """One transaction. Commits on normal exit, rolls back on any exception.

        write=False is for read-only requests: on SQLite they do not take the write lock.
        audit: who acts; changes made through the repository are recorded in this transaction.
        durable=False: derived state that is written again anyway (the agents' status reports:
        a full resync reads the stored statuses and rewrites those that differ), committed
        without waiting for the disk. Atomic and visible at once; SQLite (synchronous=NORMAL in
        WAL mode): survives a crash of this process, may be lost on power loss; PostgreSQL
        (synchronous_commit off): may be lost if the server crashes within its WAL writer's
        delay (~0.6 s). Never for anything acknowledged to a client.
        """
        # The write flags ride on the session's connection, not on an Engine.execution_options()
        # copy, whose joined event dispatch costs every statement (~2.5% of a create's CPU).
        options = {WRITE_OPTION: True, DURABLE_OPTION: durable} if write else {}
        self._check_file()  # before any connection: never open, nor use, a file not ours
        # SQLite writers of this process queue here, in order, rather than in SQLite's busy
        # handler, which sleeps up to 100 ms between tries (p99 of ~1 s with 8 clients).
        with self._writer_turn(write):
            try:
                with Session(
                    self._engine, expire_on_commit=False, execution_options=options
                ) as session:
                    repository = Repository(session, audit, change_history=self.change_history)
                    repository.committing = self._own_pending
                    try:
                        if write and not durable and self.dialect == "postgresql":
                            session.execute(text("SET LOCAL synchronous_commit = off"))
                        yield repository
                        if write:
                            self._check_file()  # never acknowledge a write into a vanished file
                        # Before the commit too: a reload between it and the notes below
                        # must not take the router's row from notes it changed otherwise.
                        unvouched = self._unvouch(repository)
                        try:
                            repository.write_changes()  # the change log, in this transaction
                            session.commit()
                        except BaseException:
                            self._own_done(repository.change_revisions)
                            raise
                    except BaseException:
                        session.rollback()
                        raise
            except IntegrityError as exc:
                # The repository checks constraints first; one that still fires lost a race.
                raise Conflict("a concurrent change conflicted with this one; retry") from exc
            except DBAPIError as exc:
                if _sqlstate(exc) in _RETRYABLE:
                    # PostgreSQL chose this transaction to undo (a deadlock): nothing was written.
                    raise Conflict("a concurrent change conflicted with this one; retry") from exc
                log.error("database error: %s", exc.__class__.__name__, exc_info=exc)
                raise Unavailable(_describe(exc)) from exc
        # After the commit, never before: a log line must not tell of a change that was undone.
        if repository.revision_notes:
            self.revision_notes.note(repository.revision_notes, repository.revision_contents)
        if unvouched:
            self._unvouch(repository)
        emit(repository.audit.committed_events())
        if repository.changed_routers:
            self._notify(frozenset(repository.changed_routers))
        if repository.change_revisions is not None and self._listener is not None:
            self._told_own(*repository.change_revisions)

    def _unvouch(self, repository: Repository) -> bool:
        """The revision notes stop vouching for the routers this unit of work changed otherwise
        than by noted revisions: created, deleted or resynced (their notes dropped: a router of
        the same id may come back at revision 1), and those whose status it wrote (statuses
        move without a revision): their rows are read again (store/revisions.py). Called
        before the commit and after it; False when it concerns no router."""
        statuses = repository.router_statuses_written
        changed = repository.changed_routers
        if not statuses and not changed:
            return False
        unnoted = changed.difference(note[0] for note in repository.revision_notes)
        if unnoted:
            self.revision_notes.forget(unnoted)
        if statuses:
            self.revision_notes.distrust(statuses)
        return bool(unnoted or statuses)

    def _own_pending(self, revisions: tuple[int, int]) -> None:
        """Revisions this process is committing (the change log was just written, the COMMIT
        comes next): their NOTIFY may reach the listener before the commit's own telling is
        done (_told_own), and must not be read and told again."""
        if self._listener is not None:
            with self._lock:
                self._committing.add(revisions)

    def _own_done(self, revisions: tuple[int, int] | None) -> None:
        if revisions is not None:
            with self._lock:
                self._committing.discard(revisions)

    def _told_own(self, first: int, last: int) -> None:
        """This process's subscribers were just told of its own commit (revisions first..last):
        when every revision before it was told already, its NOTIFY needs no read (on
        PostgreSQL that read was a fifth of a create's cost). After a gap (another process's
        commit not yet told, a rolled-back revision) the listener reads as before."""
        with self._lock:
            self._committing.discard((first, last))
            if self._told_revision is not None and self._told_revision == first - 1:
                self._told_revision = last

    @contextmanager
    def _writer_turn(self, write: bool) -> Iterator[None]:
        """SQLite: writers one at a time, of this process and of others on the file (see
        writer_turns; bounded as SQLite's busy_timeout is)."""
        if not write or self._sqlite_writers is None:
            yield
            return
        with self._sqlite_writers.turn(WRITER_TURN_TIMEOUT):
            yield

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
        outcome: str = Outcome.DENIED,
    ) -> None:
        """Records a denied attempt without waiting for the database: queued now, committed by
        the background writer within a tick (or by `flush_denied`, or `close`). outcome
        "failed": an allowed change that did not take effect, recorded the same way."""
        event = DeniedEvent(
            context=context,
            time=datetime.now(UTC),
            action=action,
            target_type=target_type,
            target_id=target_id,
            target_project_id=target_project_id,
            status_code=status_code,
            detail=detail,
            outcome=Outcome(outcome).value,
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
                    outcome=event.outcome,
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

    def check_writable(self, timeout: float = 2.0) -> None:
        """Raises Unavailable unless a write transaction could begin now (readiness, /readyz):
        on SQLite the write lock is taken (BEGIN IMMEDIATE, waiting at most `timeout` seconds
        instead of the busy timeout) and released, nothing written; on PostgreSQL the server
        must not be a standby nor the session read-only."""
        self._check_file()
        try:
            with self._engine.connect() as connection:
                if self.dialect == "postgresql":
                    row = connection.execute(
                        text("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
                    ).one()
                    connection.rollback()
                    if row[0] or row[1] == "on":
                        raise Unavailable("the database is read-only")
                    return
                raw: Any = connection.connection.dbapi_connection
                cursor = raw.cursor()
                try:
                    cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                    cursor.execute("BEGIN IMMEDIATE")
                    cursor.execute("ROLLBACK")
                finally:
                    cursor.execute(f"PRAGMA busy_timeout={int(WRITER_TURN_TIMEOUT * 1000)}")
                    cursor.close()
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:  # sqlite3's: the raw cursor's
            raise Unavailable(_describe(exc)) from exc

    def close(self) -> None:
        """Stops listening, commits the denied attempts still queued, then closes the
        connections."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        self.denied_writer.close()
        self._engine.dispose()
        if self._sqlite_writers is not None:
            self._sqlite_writers.close()

    def _changed_anywhere(self, revision: int | None) -> None:
        """The listener's callback, in its thread: a NOTIFY of a commit by any process, or None
        after a (re)connect. A notification carries only a revision: the routers changed since
        the last revision told are read from the change log, and the subscribers told of them
        (a read that fails still wakes them: the watches read again by revision themselves)."""
        with self._lock:
            told = self._told_revision
            own = revision is not None and any(
                first <= revision <= last for first, last in self._committing
            )
            read = self._router_ids_wanted
        if own or (revision is not None and told is not None and revision <= told):
            return  # an earlier read covered it, or this process's own commit tells it
        changed: frozenset[str] = frozenset()
        if not read:
            self.revision_notes.distrust(None)  # which routers is not known: all of them
            self._notify(changed)
            return
        known = False
        try:
            with self.unit_of_work(write=False) as repo:
                head = repo.hosts.head_revision()
                if told is not None:
                    # At most the retained history; the agent's resync covers anything beyond.
                    changes = repo.hosts.changes_since(told, None, self.change_history)
                    changed = frozenset(change.router_id for change in changes)
                    known = len(changes) < self.change_history  # else some may be left out
            with self._lock:
                self._told_revision = max(head, self._told_revision or 0)
        except (CthmError, SQLAlchemyError) as exc:
            reason = exc.message if isinstance(exc, CthmError) else _describe(exc)
            log.warning("cannot read the changes of other processes: %s", reason)
        # Before the subscribers hear of it: the agent's reload of these routers reads their
        # rows, not this process's revision notes (store/revisions.py).
        self.revision_notes.distrust(changed if known else None)
        self._notify(changed)

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


def migration_head() -> str:
    """The schema revision this cthm's migrations end at."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the migrations ship with the package
    return head


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _unlock_migrations(connection: Connection) -> None:
    try:
        connection.rollback()  # a failed migration's transaction, else nothing
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
    except SQLAlchemyError:
        # The connection is gone, and its session lock with it: never hide the first error.
        log.debug("could not release the migration lock; the connection is closed")


# SQLSTATEs of a transaction PostgreSQL undid to let a concurrent one go on: a retry succeeds.
_RETRYABLE = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "")


def _describe(exc: BaseException) -> str:
    """What went wrong, for a person and without credentials: never the driver's own text
    (PostgreSQL's names the user, the host and the database)."""
    state = _sqlstate(exc)
    if state:
        return _describe_sqlstate(state)
    text_ = str(getattr(exc, "orig", exc)) or exc.__class__.__name__
    if any(phrase in text_ for phrase in _TLS_PHRASES):
        return "TLS to the database server failed (see sslmode in the database URL)"
    for phrase, state in _CONNECT_PHRASES:
        if phrase in text_:
            return _describe_sqlstate(state)
    if "readonly" in text_ or "read-only" in text_:
        return "the database is read-only"
    if "disk is full" in text_ or "disk I/O error" in text_:
        return "the database disk is full or failing; nothing was written"
    if "locked" in text_:
        return "the database is busy; retry"
    return "the database is unavailable"


# libpq's words when TLS to the server cannot be set up (not those of a TLS session dropped).
_TLS_PHRASES = ("SSL was required", "certificate", "SSL negotiation", "does not support SSL")
# libpq's words when a connection fails before the server gives a SQLSTATE, as the SQLSTATE.
_CONNECT_PHRASES = (
    ("authentication failed", "28P01"),
    ("no pg_hba.conf entry", "28000"),
    ('role "', "28000"),  # role "x" does not exist
    ("does not exist", "3D000"),  # database "x" does not exist
    ("is starting up", "57P03"),
    ("is shutting down", "57P03"),
    ("too many clients", "53300"),
    ("connection failed", "08001"),
    ("connection refused", "08001"),
    ("Connection refused", "08001"),
    ("timeout expired", "08001"),
    ("server closed the connection", "08006"),
    ("could not translate host name", "08001"),
    ("consuming input failed", "08006"),
)


def _describe_sqlstate(state: str) -> str:
    if state.startswith("08"):  # connection exception
        return "the database server cannot be reached; retry"
    if state in ("57P01", "57P02", "57P03"):  # admin/crash shutdown, cannot connect now
        return "the database server is restarting or shutting down; retry"
    if state.startswith("28"):  # invalid authorization
        return "the database server refused the credentials"
    if state == "3D000":
        return "the database does not exist on the database server"
    if state == "42501":
        return "the database user lacks a privilege cthm needs"
    if state == "25006":
        return "the database is read-only"
    if state in ("53100", "53200", "58030"):  # disk full, out of memory, I/O error
        return "the database server is out of disk space or memory, or failing"
    if state in ("53300", "55P03") or state in _RETRYABLE:  # too many connections, lock
        return "the database is busy; retry"
    if state == "57014":  # statement cancelled (statement_timeout)
        return "the database took too long; retry"
    return "the database is unavailable"
