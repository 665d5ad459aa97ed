"""The embedded cthm service: everything `cthm serve` runs in one process, built from settings.

Start order: data directory, its lock (one server per data directory, taken before any database
or kernel work), store (migrated), [in-process agent], API; stop in reverse. Once
the API's socket is bound, the first admin token is made if no token exists at all (after every
check that can refuse to start, so a start that fails creates nothing and prints nothing).
A PostgreSQL server that cannot be reached at start is waited for (said in one line, tried
again with a capped backoff; SIGTERM still stops the start at once).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from cthm.agent import Agent, KernelBackend, LocalStoreSource, check_namespace
from cthm.cli.backends import BackendSettings, check_identity, prepare_backends
from cthm.cli.errors import DataDirInUse, ServiceError, ServiceSettingError
from cthm.cli.server import Limits, bind_listener, check_tls_files, listener_url, run_server
from cthm.domain import AgentReport, AuthToken, CthmError, Role, derive_agent_id
from cthm.netfilter import BackendChoice, read_raw_tables
from cthm.settings import Settings
from cthm.store import AuditContext, AuditLog, Store, deployment_id

if TYPE_CHECKING:
    from fastapi import FastAPI

DATA_DIR_MODE = 0o700
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 (a file name)
ADMIN_TOKEN_MODE = 0o600
BOOTSTRAP_PROJECT = "admin"
LOCK_FILE = "cthm.lock"
LOCK_MODE = 0o600
RECOVERY_FILE = "admin-recovery-{stamp}{suffix}.token"
RECOVERY_ATTEMPTS = 100  # names tried when recoveries in the same second collide
# `cthm serve` warns at start when every admin token expires within this.
ADMIN_EXPIRY_WARNING = timedelta(days=14)
# A database server not reachable at start is waited for: tried again after this many seconds,
# the wait doubling up to the cap.
DATABASE_RETRY_FIRST = 1.0
DATABASE_RETRY_MAX = 30.0

log = logging.getLogger(__name__)


class StartCancelled(Exception):
    """SIGTERM or SIGINT came while the start waited for the database: nothing started."""


class Service:
    """Use as a context manager (start on enter, stop on exit), then call `serve()`.

    say: where one-line notices for the operator go (default: stdout).
    """

    def __init__(self, settings: Settings, *, say: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._say = say or _echo
        self.admin_token_file: Path | None = None  # set when this start created it
        self._store: Store | None = None
        self._lock: DataDirLock | None = None
        self._backend: KernelBackend | None = None
        self._retired: tuple[KernelBackend, ...] = ()
        self.agent: Agent | None = None
        # Which backend the agent uses and why (set when the agent starts).
        self.backend_choice: BackendChoice | None = None

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the service is not started")
        return self._store

    def start(self) -> None:
        """Prepares the data directory and the migrated store; ServiceError if it cannot."""
        prepare_data_dir(self.settings.data_dir)
        # Before the database and the kernel: a second server on this directory would migrate
        # under the first one and its agent would fight the first one's over the same routers.
        self._lock = DataDirLock.acquire(self.settings.data_dir)
        try:
            self._store = self._open_store()
            # Settings first (a backend that cannot be used), then the first token, then the
            # agent's threads: a refused start says only its error, and one refused over the
            # token file has not swept or written anything in the kernel.
            if self.settings.agent_enabled:
                self._prepare_agent(self._store)
            self.bootstrap()
            if self.agent is not None:
                # Every committed API change wakes the agent at once: no polling delay.
                self._store.subscribe(self.agent.enqueue)
                self.agent.start()
        except BaseException:
            self.stop()
            raise

    def _open_store(self) -> Store:
        """The migrated store. A database server that cannot be reached (not up yet,
        restarting, too many clients) is waited for: said once, in one line, then tried again
        with a capped backoff until it answers. SIGTERM or SIGINT meanwhile ends the start
        (StartCancelled), at once or after the connection attempt under way (its timeout)."""
        url = self.settings.effective_database_url
        delay, waiting_since = DATABASE_RETRY_FIRST, 0.0
        with _stop_signals() as stop:
            while True:
                try:
                    store = open_store(url, change_history=self.settings.watch_history)
                except ServiceError as exc:
                    if not database_unreachable(url, exc):
                        raise
                    if not waiting_since:
                        waiting_since = time.monotonic()
                        log.warning(
                            "%s; waiting for it: trying again after %g s, then up to every %g s",
                            exc.message.removesuffix("; retry"),
                            DATABASE_RETRY_FIRST,
                            DATABASE_RETRY_MAX,
                        )
                    else:
                        log.debug("%s; trying again in %g s", exc.message, delay)
                    if stop.wait(delay):
                        raise StartCancelled() from None
                    delay = min(delay * 2, DATABASE_RETRY_MAX)
                    continue
                if stop.is_set():
                    store.close()
                    raise StartCancelled()
                if waiting_since:
                    waited = time.monotonic() - waiting_since
                    log.info("the database answered after %.0f s of waiting", waited)
                return store

    def bootstrap(self) -> Path | None:
        """Makes the first admin token if the store holds none, and says where its secret is
        (start() calls it). Returns that file, or None (tokens exist). ServiceError if it
        cannot."""
        created = bootstrap_admin_token(self.store, self.settings.data_dir)
        if created is not None:
            self.admin_token_file = created
            self._say(
                f"cthm created the first admin token: it is in {created} "
                "(readable only by its owner); use it as --token or CTHM_TOKEN"
            )
        self.warn_admin_access()
        return created

    def warn_admin_access(self) -> None:
        """Logs a WARNING when no admin token is usable, or every one expires soon: revoking
        into that state is refused unless forced, but tokens also just expire."""
        now = datetime.now(UTC)
        with self.store.unit_of_work(write=False) as repo:
            end = repo.tokens.admin_access_end(now)
        recover = f"cthm token recover --data-dir {self.settings.data_dir}"
        if end is None or end - now > ADMIN_EXPIRY_WARNING:
            return
        if end <= now:
            log.warning("no admin token is usable: nobody can administer cthm; run `%s`", recover)
            return
        log.warning(
            "admin access ends at %s (in %d days): every admin token expires by then; create an "
            "admin token without expiry (cthm token create --role admin) or run `%s`",
            end.isoformat().replace("+00:00", "Z"),
            (end - now).days,
            recover,
        )

    def _prepare_agent(self, store: Store) -> None:
        """Chooses the backend and builds the agent, not started: nothing in the kernel yet."""
        settings = self.settings
        prepared = prepare_backends(
            BackendSettings(
                settings.backend,
                settings.iptables_flavour,
                settings.nft_backend,
                settings.agent_kernel_processes,
            ),
            functools.partial(stored_namespaces, store),
            functools.partial(_identity, store),
        )
        self.backend_choice = prepared.choice
        self._backend, self._retired = prepared.backend, prepared.retired
        # Looks for iptables-nft's raw tables in-process first; only while the agent's nftables
        # backend keeps the runner open (the iptables backend reads with iptables-save anyway).
        self.agent = Agent(
            LocalStoreSource(store),
            self._backend,
            settings.catalog(),
            workers=settings.agent_workers,
            resync_interval=settings.resync_interval,
            probe_at_start=True,
            sweep_orphans=settings.sweep_orphans,
            retired_backends=self._retired,
            raw_tables=functools.partial(read_raw_tables, nft=prepared.nft),
        )

    def stop(self) -> None:
        """Idempotent. The agent finishes in-flight work and stops before the store closes."""
        agent, self.agent = self.agent, None
        if agent is not None:
            agent.stop()
        for backend in (self._backend, *self._retired):
            if backend is not None:
                backend.close()
        self._backend, self._retired = None, ()
        store, self._store = self._store, None
        if store is not None:
            store.close()
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()  # last: nothing of this server touches the directory after it

    def app(self) -> FastAPI:
        from cthm.api import create_app

        agent = self.agent
        availability = agent.capabilities.snapshot if agent is not None else None
        kernel_state = agent.kernel_state if agent is not None else None
        return create_app(
            self.settings,
            self.store,
            helper_availability=availability,
            kernel_state=kernel_state,
            helper_usage=agent.helper_usage if agent is not None else None,
            agents=self._agent_reports(),
            # The check looks at this host's namespaces: only where the agent is on this host.
            namespace_check=check_namespace if agent is not None else None,
            # Embedded mode: this host places every router, and node agents are refused.
            local_agent_host=socket.gethostname() if agent is not None else None,
            resync=agent.resync_router if agent is not None else None,
        )

    def _agent_reports(self) -> Callable[[], list[AgentReport]] | None:
        """What GET /v2.0/agents shows of the in-process agent: its identity and backend
        choice, fixed now, and its snapshot, read at every request."""
        agent, choice = self.agent, self.backend_choice
        if agent is None or choice is None:
            return None
        host = socket.gethostname()
        agent_id = derive_agent_id(host, self.settings.data_dir)
        iptables = choice.backend == "iptables"

        def reports() -> list[AgentReport]:
            return [
                AgentReport(
                    id=agent_id,
                    host=host,
                    backend=choice.backend,
                    chosen_by="auto" if choice.auto else "configuration",
                    reason=choice.reason,
                    iptables_flavour=choice.flavour if iptables else None,
                    iptables_flavour_reason=(choice.flavour_reason or None) if iptables else None,
                    retired_backends=choice.retired_labels,
                    snapshot=agent.snapshot(),
                )
            ]

        return reports

    def serve(
        self,
        on_listening: Callable[[str], None] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """Serves the API until SIGTERM or SIGINT; `on_listening(url)` once connections queue.
        sock: the listener from `listen()`, bound before start() so a port in use is the only
        thing a refused start does; else bound here. Closed when serving ends."""
        tls = tls_files(self.settings)
        if sock is None:
            sock = listen(self.settings)
        from cthm.api import begin_shutdown

        app = self.app()
        try:
            # Said once the start can no longer fail: a refused start prints only its error.
            if self.backend_choice is not None:
                log.info("%s", self.backend_choice.describe())
            if on_listening is not None:
                on_listening(listener_url(sock, tls=tls is not None))
            run_server(
                app,
                sock,
                log_level=self.settings.log_level,
                tls=tls,
                limits=Limits.of(self.settings),
                on_shutdown=functools.partial(begin_shutdown, app),
            )
        finally:
            sock.close()

    def serve_workers(
        self,
        count: int,
        on_listening: Callable[[str], None] | None = None,
        sock: socket.socket | None = None,
    ) -> int:
        """Serves the API from `count` worker processes on one socket (cthm.cli.workers) until
        SIGTERM or SIGINT (0), or until a worker ends on its own (1). Needs the agent off. The
        database was migrated and the first token made by start(), here, once; this process's
        connections are closed before the fork, and each worker opens its own store."""
        if self.agent is not None:
            raise ServiceSettingError("API workers need the agent off (--no-agent)")
        from cthm.cli.workers import run_workers

        tls = tls_files(self.settings)
        if sock is None:
            sock = listen(self.settings)
        store, self._store = self._store, None
        if store is not None:
            store.close()

        def work(_index: int) -> int:  # pragma: no cover (runs in the forked worker)
            url = self.settings.effective_database_url
            self._store = Store(url, change_history=self.settings.watch_history)
            try:
                self.serve(sock=sock)
            finally:
                self._store.close()
            return 0

        try:
            if on_listening is not None:
                on_listening(listener_url(sock, tls=tls is not None))
            return run_workers(count, work)
        finally:
            sock.close()


@contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event that SIGTERM and SIGINT set while the block runs (in the main thread only,
    where signals are handled; elsewhere it is never set). The previous handlers come back
    after the block."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda _sig, _frame: stop.set()) for sig in handled}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# SQLSTATEs worth waiting for at start: connection exceptions (class 08), a server shutting
# down, restarting or starting up (57P0x), too many connections (53300).
_WAIT_FOR_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
# libpq's words for a connection that fails before the server gives a SQLSTATE.
_WAIT_FOR_PHRASES = (
    "connection refused",
    "timeout expired",
    "timed out",
    "server closed the connection",
    "could not translate host name",
    "no route to host",
    "network is unreachable",
    "no such file or directory",  # a Unix socket: no server there (yet)
    "is starting up",
    "is shutting down",
    "in recovery mode",
    "not yet accepting connections",
    "too many clients",
    "consuming input failed",
    "connection reset",
)


def database_unreachable(url: str, exc: BaseException) -> bool:
    """Whether a start failed because the PostgreSQL server cannot be reached now (down,
    starting, restarting, busy, no route): worth waiting for. Refused credentials, a missing
    database or a broken schema are not: waiting would change nothing."""
    try:
        if make_url(url).get_backend_name() != "postgresql":
            return False
    except (ArgumentError, ValueError):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError):
            state = str(getattr(current.orig, "sqlstate", None) or "")
            if state:
                return state.startswith("08") or state in _WAIT_FOR_STATES
            text = str(current.orig).lower()
            return any(phrase in text for phrase in _WAIT_FOR_PHRASES)
        current = current.__cause__ or current.__context__
    return False


def tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """The certificate and key to serve HTTPS with, checked; None: plain HTTP."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    check_tls_files(settings.tls_cert_file, settings.tls_key_file)
    return settings.tls_cert_file, settings.tls_key_file


def listen(settings: Settings) -> socket.socket:
    """The API's listening socket, TLS files checked first: both are one clear error before
    anything else starts (ServiceError)."""
    tls_files(settings)
    return bind_listener(settings.host, settings.port)


def _identity(store: Store) -> str:
    """The database's deployment identity, which marks everything the agent writes."""
    try:
        found = deployment_id(store)
    except CthmError as exc:
        raise ServiceError(f"cannot read the deployment identity: {exc.message}") from exc
    return check_identity(found)


def stored_namespaces(store: Store) -> Generator[str, None, None]:
    """The namespaces of stored routers (by id), then of deleted routers not yet cleaned up,
    read lazily: the caller takes the few it needs and closes the generator. A router whose
    row fails validation is skipped (the agent refuses it anyway)."""
    with store.unit_of_work(write=False) as repo:
        for router_id in repo.list_router_ids():
            try:
                yield repo.get_router(router_id).namespace
            except CthmError:
                continue
        yield from sorted(repo.tombstones().values())


def prepare_data_dir(path: Path) -> None:
    """Creates the data directory private to its owner if it is missing; leaves one that exists."""
    try:
        path.mkdir(mode=DATA_DIR_MODE, parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise ServiceError(f"data directory {path} exists and is not a directory") from None
        return
    except OSError as exc:
        raise ServiceError(f"cannot create data directory {path}: {exc.strerror or exc}") from exc
    path.chmod(DATA_DIR_MODE)  # mkdir's mode is masked by the umask


class DataDirLock:
    """An exclusive flock on `<data dir>/cthm.lock`, holding the holder's pid and host.

    flock, not the file's existence, is the lock: the kernel drops it when the process ends,
    however it ends, so a SIGKILLed server never leaves a stale lock. The file itself stays.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """The lock, or DataDirInUse naming its holder; ServiceError if it cannot be taken."""
        path = data_dir / LOCK_FILE
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, LOCK_MODE)
        except OSError as exc:
            raise ServiceError(f"cannot open lock file {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise DataDirInUse(
                f"data directory {data_dir} is in use by another cthm serve ({holder}); "
                "stop it first or use another --data-dir"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ServiceError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        try:
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode("utf-8"), 0)
        except OSError as exc:
            os.close(fd)
            raise ServiceError(f"cannot write lock file {path}: {exc.strerror or exc}") from exc
        return cls(path, fd)

    def release(self) -> None:
        """Idempotent. Closing the descriptor drops the lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _lock_holder(fd: int) -> str:
    """'pid N on host H' from a lock file, as far as it can be read (its holder may be
    writing it right now: a few short retries)."""
    for _ in range(5):
        try:
            record = json.loads(os.pread(fd, 512, 0).decode("utf-8", "replace"))
            pid, host = record["pid"], record["host"]
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.02)
            continue
        if isinstance(pid, int) and isinstance(host, str):
            shown = "".join(c for c in host[:64] if c.isprintable())
            return f"pid {pid} on host {shown}"
        break
    return "its pid is not recorded"


def bootstrap_admin_token(store: Store, data_dir: Path) -> Path | None:
    """On a database without any token: creates one admin token and writes its secret to
    `<data_dir>/admin.token`, created new (never through an existing file or link) with mode
    0600. Returns the file, or None when tokens exist (later starts create nothing).

    A file left there while the database has no token is not overwritten: someone may rely on
    it, and it is not ours to replace (ServiceError, saying what to do).
    """
    path = data_dir / ADMIN_TOKEN_FILE
    written = False
    try:
        with store.unit_of_work() as repo:
            # Exclusive: of replicas starting together on one database, one makes the token.
            if repo.tokens.count(exclusive=True) > 0:
                return None
            token, secret = repo.tokens.create(
                project_id=BOOTSTRAP_PROJECT,
                roles=[Role.ADMIN],
                description="first admin token, created by cthm serve",
            )
            _audit_admin_token(
                repo.audit, "create_auth_token", token, "bootstrap: no token existed"
            )
            _write_secret(path, secret)
            written = True
    except BaseException as exc:
        # The commit happens as the block ends; if it failed, the file must not stay behind
        # holding a secret the database never had.
        if written:
            path.unlink(missing_ok=True)
        if isinstance(exc, CthmError):
            raise ServiceError(f"cannot create the first admin token: {exc.message}") from exc
        raise
    return path


def _audit_admin_token(audit: AuditLog, action: str, token: AuthToken, detail: str) -> None:
    """The audit event of an admin token made here, outside the API (as the API records one)."""
    audit.record(
        action=action,
        target_type="auth_token",
        target_id=token.id,
        target_project_id=token.project_id,
        before=None,
        after={"id": token.id, "project_id": token.project_id, "roles": ["admin"]},
        status_code=201,
        detail=detail,
    )


def recover_admin_token(store: Store, data_dir: Path, *, caller: str) -> tuple[AuthToken, Path]:
    """`cthm token recover`: a new admin token (project `admin`, no expiry), its secret written
    to a new file `<data_dir>/admin-recovery-<UTC time>.token` (mode 0600, never an existing
    file), and an audit event `recover_auth_token` naming `caller`, all in one transaction.

    Whoever can write the database file is already its master: that access is the authority, so
    it needs no token. It goes through the store (not the API) and takes no data directory lock,
    so it works beside a running server (SQLite WAL) and without one; the running server sees
    the token at its next request. ServiceError if it cannot.
    """
    now = datetime.now(UTC)
    path: Path | None = None
    try:
        audit = AuditContext(request_id="", token_id=None, project_id=None)
        with store.unit_of_work(audit=audit) as repo:
            token, secret = repo.tokens.create(
                project_id=BOOTSTRAP_PROJECT,
                roles=[Role.ADMIN],
                description="admin token made by cthm token recover",
            )
            path = _write_recovery_file(data_dir, now, secret)
            detail = f"local recovery by {caller}; secret written to {path}"
            _audit_admin_token(repo.audit, "recover_auth_token", token, detail)
    except BaseException as exc:
        # As for the first token: no file may outlive a commit that failed.
        if path is not None:
            path.unlink(missing_ok=True)
        if isinstance(exc, CthmError):
            raise ServiceError(f"cannot create a recovery token: {exc.message}") from exc
        raise
    return token, path


def _write_recovery_file(data_dir: Path, now: datetime, secret: str) -> Path:
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1, RECOVERY_ATTEMPTS + 1):
        suffix = "" if attempt == 1 else f"-{attempt}"
        path = data_dir / RECOVERY_FILE.format(stamp=stamp, suffix=suffix)
        try:
            _create_secret_file(path, secret)
        except FileExistsError:
            continue  # never overwrite: someone may rely on that file
        return path
    raise ServiceError(f"cannot find a free file name for {data_dir / RECOVERY_FILE}")


def _write_secret(path: Path, secret: str) -> None:
    try:
        _create_secret_file(path, secret)
    except FileExistsError:
        raise ServiceError(
            f"{path} exists but the database has no token: refusing to overwrite it; "
            "move it away (its token cannot work with this database) and start again"
        ) from None


def _create_secret_file(path: Path, secret: str) -> None:
    """Creates `path` new (FileExistsError if anything is there, even a dangling link), mode
    0600 whatever the umask, holding the secret, synced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, ADMIN_TOKEN_MODE)
    except FileExistsError:
        raise
    except OSError as exc:
        raise ServiceError(f"cannot create {path}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, ADMIN_TOKEN_MODE)  # the mode given to open() is masked by the umask
        data = (secret + "\n").encode("ascii")
        if os.write(fd, data) != len(data):
            raise OSError(errno.EIO, "short write")
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise ServiceError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)


def _echo(message: str) -> None:
    import click

    click.echo(message)


def open_store(url: str, *, change_history: int | None = None) -> Store:
    """The store, migrated. change_history: change-log entries kept (None: the store's
    default)."""
    shown = redact_url(url)
    try:
        store = Store(url) if change_history is None else Store(url, change_history=change_history)
    except (SQLAlchemyError, ValueError) as exc:
        raise ServiceSettingError(f"cannot use database {shown}: {_reason(exc)}") from exc
    try:
        store.migrate()
    except (CthmError, SQLAlchemyError, CommandError, OSError) as exc:
        store.close()
        raise ServiceError(f"cannot open database {shown}: {_reason(exc)}") from exc
    return store


def open_existing_store(settings: Settings) -> Store:
    """The store of a deployment as it is, for a tool beside its server: never creates the
    database and never migrates it (the server may be running on it). ServiceError if there is
    no database yet."""
    url = settings.effective_database_url
    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ServiceSettingError(f"cannot use database {shown}: {_reason(exc)}") from exc
    if parsed.get_backend_name() == "sqlite":
        database = str(parsed.database or "").removeprefix("file:").split("?", 1)[0]
        if database in ("", ":memory:") or not Path(database).is_file():
            raise ServiceError(
                f"no database at {shown}: is this the data directory of a cthm serve "
                "(--data-dir, CTHM_DATA_DIR)?"
            )
    try:
        return Store(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise ServiceSettingError(f"cannot use database {shown}: {_reason(exc)}") from exc


def redact_url(url: str) -> str:
    """The database URL for a person to read: the password is never shown."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(invalid URL)"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, CthmError):
        return exc.message
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    first = text.splitlines()[0] if text else ""
    return first or exc.__class__.__name__
