"""A throwaway PostgreSQL cluster for tests: initdb in a directory of its own, run as the
`postgres` user on 127.0.0.1 and a free port (never 5432), stopped by its own pid.

Nothing outside `base_dir` is touched: the data directory, the Unix socket and the server log
all live in it, and no existing cluster (Debian's `main`, /var/lib/postgresql) is read or
started. Durability is traded for speed (fsync and full_page_writes off): a killed server
loses nothing it acknowledged, a killed machine might.

Databases are copied from a template migrated to the newest schema once (`cthm_template`), so
`create_database` costs a file copy instead of a run of every migration. The role `cthm` owns
them and logs in with a password over TCP (scram-sha-256); the socket trusts local users (the
cluster's own administration, as `postgres`).

    cluster = PostgresCluster(Path(tempfile.mkdtemp()))
    cluster.start()
    url = cluster.create_database("test_1")  # postgresql+psycopg://cthm:...@127.0.0.1:PORT/test_1
    ...
    cluster.stop()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

INSTALL_ROOT = Path("/usr/lib/postgresql")
"""Debian's layout: /usr/lib/postgresql/<major>/bin; the newest major is used."""
OS_USER = "postgres"
ROLE = "cthm"
TEMPLATE = "cthm_template"
ADMIN_DATABASE = "postgres"
DEFAULT_PORT = 5432  # an existing cluster's: never ours

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
REAP_TIMEOUT = 5.0
COMMAND_TIMEOUT = 120.0
CONNECT_TIMEOUT = 5
POLL_INTERVAL = 0.05
PORT_ATTEMPTS = 3

SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    # Tests do not survive a machine crash anyway: commits reach the kernel, never the disk.
    # synchronous_commit stays on, so that a killed server (kill()) keeps what it acknowledged:
    # with it off, commits wait in PostgreSQL's own memory for up to 200 ms.
    "fsync": "off",
    "full_page_writes": "off",
    # Two workers' stores (pool 10 + overflow 10 each) plus the replicas of fault tests.
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
}

Statement = str | sql.SQL | sql.Composed

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""A database name used as is in URLs and SQL: lower case letters, digits, underscores."""


class PostgresClusterError(Exception):
    """The cluster cannot be set up, started or stopped; the message says why (and, for a
    server that did not start, ends with its log)."""


def newest_binaries(root: Path = INSTALL_ROOT) -> Path | None:
    """The bin directory of the newest PostgreSQL installed under `root`, or None."""
    versions = [
        (int(d.name), d / "bin")
        for d in (root.iterdir() if root.is_dir() else ())
        if d.name.isdigit() and (d / "bin" / "initdb").is_file()
    ]
    return max(versions)[1] if versions else None


def free_port() -> int:
    while True:  # bounded in practice: the kernel hands out 5432 at most once in a long while
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != DEFAULT_PORT:
            return port


class PostgresCluster:
    """A PostgreSQL cluster in `base_dir` (created if missing, then owned by `postgres`, mode
    0700: its parents must let that user through, as tempfile.mkdtemp()'s do and pytest's
    tmp_path, 0700 root's, does not). Needs root (the server runs as `postgres`, via runuser).
    """

    def __init__(self, base_dir: Path, *, password: str | None = None) -> None:
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.socket_dir = base_dir / "socket"
        self.log_path = base_dir / "postgres.log"
        self.password = password or secrets.token_urlsafe(18)
        self.port = 0
        self._bin: Path | None = None
        self._pid: int | None = None
        self._template_ready = False
        self._lock = threading.Lock()

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # lifecycle
    def start(self) -> None:
        """initdb (the first time), then starts the server and waits until it accepts
        connections, with the role `cthm` in place."""
        if self.running:
            return
        self._bin = self._binaries()
        owner = _os_user()
        self._prepare_base_dir(owner)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb()
        for attempt in range(PORT_ATTEMPTS):
            # A port free when probed may be taken before the server binds it.
            self._configure(self.port if self.port and attempt == 0 else free_port())
            try:
                self._launch()
                break
            except PostgresClusterError:
                if attempt == PORT_ATTEMPTS - 1 or "already in use" not in self.log():
                    raise
        self._bootstrap()

    def stop(self) -> None:
        """pg_ctl stop -m fast; a server still there after STOP_TIMEOUT is killed (by pid)."""
        pid = self._pid
        if pid is None:
            return
        if _alive(pid, self.data_dir):
            with contextlib.suppress(PostgresClusterError):  # killed below
                self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT)))
        if not _wait_gone([pid], self.data_dir, STOP_TIMEOUT):
            self.kill()
        self._pid = None

    def kill(self) -> None:
        """SIGKILL to the server and its backends: a crash, as when its machine loses power
        (without the loss: the kernel still has what was written). start() recovers."""
        pid = self._pid
        if pid is None:
            return
        pids = [pid, *_children(pid)]
        for target in pids:
            if _alive(target, self.data_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
        if not _wait_gone(pids, self.data_dir, STOP_TIMEOUT):
            raise PostgresClusterError(f"PostgreSQL (pid {pid}) survived SIGKILL")
        # The postmaster is no child of ours: until init reaps it, the zombie's pid makes the
        # next start refuse ("another postmaster running"). Dead either way: its lock is stale.
        if not _wait_reaped(pid, REAP_TIMEOUT):
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        self._pid = None

    def restart(self) -> None:
        """stop() then start() on the same port: URLs handed out stay valid."""
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running."""
        return self._pid

    @property
    def running(self) -> bool:
        return self._pid is not None and _alive(self._pid, self.data_dir)

    # databases
    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` as the role `cthm` (password included)."""
        _check_name(database)
        return f"postgresql+psycopg://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, *, empty: bool = False) -> str:
        """A new database owned by `cthm`, copied from the migrated template (empty=True: no
        tables at all, for a test that migrates it itself); returns its url()."""
        _check_name(name)
        with self._lock:
            if not empty:
                self._ensure_template()
            source = "template0" if empty else TEMPLATE
            self.admin_execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(ROLE), sql.Identifier(source)
                )
            )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drops `name` (if it exists), ending any session still connected to it."""
        _check_name(name)
        self.admin_execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def databases(self) -> list[str]:
        """Every database of the cluster except PostgreSQL's own templates."""
        rows = self.admin_query(
            "SELECT datname FROM pg_database WHERE datname NOT IN ('template0', 'template1') "
            "ORDER BY datname"
        )
        return [str(row[0]) for row in rows]

    def admin_execute(self, statement: Statement, params: Sequence[Any] = ()) -> None:
        """Runs one statement as the superuser, autocommit (CREATE DATABASE cannot run in a
        transaction)."""
        with self._admin_connection() as connection:
            connection.execute(statement, params or None)

    def admin_query(
        self, statement: Statement, params: Sequence[Any] = (), database: str = ADMIN_DATABASE
    ) -> list[tuple[Any, ...]]:
        """The rows of one query run as the superuser in `database`."""
        with self._admin_connection(database) as connection:
            return list(connection.execute(statement, params or None).fetchall())

    def log(self) -> str:
        """The server's log (its stderr), for assertion messages."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # internals
    def _binaries(self) -> Path:
        if os.geteuid() != 0:
            raise PostgresClusterError("needs root: the cluster runs as the postgres user")
        found = newest_binaries()
        if found is None:
            raise PostgresClusterError(
                f"no PostgreSQL under {INSTALL_ROOT} (Debian: apt-get install postgresql)"
            )
        return found

    def _prepare_base_dir(self, owner: pwd.struct_passwd) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        for path in (self.base_dir, self.socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
            path.chmod(0o700)
        probe = _as_postgres(["test", "-w", str(self.base_dir)], cwd=Path("/"))
        if probe.returncode != 0:
            raise PostgresClusterError(
                f"{self.base_dir} is not reachable by the {OS_USER} user: one of its parents "
                "does not let it through (use a directory from tempfile.mkdtemp())"
            )

    def _initdb(self) -> None:
        assert self._bin is not None
        self._run(
            str(self._bin / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            OS_USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\ninclude_if_exists = 'cthm.conf'  # written by cthm.testing\n")

    def _configure(self, port: int) -> None:
        self.port = port
        settings = {
            **SERVER_SETTINGS,
            "port": str(port),
            "unix_socket_directories": f"'{self.socket_dir}'",
        }
        conf = self.data_dir / "cthm.conf"
        conf.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()), encoding="utf-8")
        owner = _os_user()
        os.chown(conf, owner.pw_uid, owner.pw_gid)

    def _launch(self) -> None:
        self.log_path.unlink(missing_ok=True)
        self._pg_ctl("start", "-w", "-t", str(int(START_TIMEOUT)), "-l", str(self.log_path))
        self._pid = self._postmaster_pid()
        if self._pid is None:
            raise PostgresClusterError(f"PostgreSQL started but wrote no pid: {self.log()}")

    def _bootstrap(self) -> None:
        with self._admin_connection() as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)
            ).fetchone()
            verb = "ALTER" if exists else "CREATE"
            connection.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)
                )
            )

    def _ensure_template(self) -> None:
        if self._template_ready:
            return
        # A template left by an earlier start() of the same data directory is reused.
        exists = self.admin_query("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,))
        if not exists:
            from cthm.store import Store  # the kit's import stays light without a cluster

            self.admin_execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                    sql.Identifier(TEMPLATE), sql.Identifier(ROLE)
                )
            )
            store = Store(self.url(TEMPLATE))
            try:
                store.migrate()
            finally:
                store.close()
            # No session may be connected to a template being copied: none ever will be.
            self.admin_execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                    sql.Identifier(TEMPLATE)
                )
            )
            self.admin_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (TEMPLATE,),
            )
        self._template_ready = True

    def _admin_connection(self, database: str = ADMIN_DATABASE) -> psycopg.Connection[Any]:
        if not self.running:
            raise PostgresClusterError("the cluster is not running")
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=OS_USER,
            dbname=database,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
        )

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text(encoding="ascii").split("\n")[0]
        except (FileNotFoundError, PermissionError):
            return None
        return int(first) if first.strip().isdigit() else None

    def _pg_ctl(self, *args: str) -> None:
        assert self._bin is not None
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-s", *args)

    def _run(self, *argv: str) -> None:
        done = _as_postgres(list(argv), cwd=self.base_dir)
        if done.returncode != 0:
            raise PostgresClusterError(
                f"{Path(argv[0]).name} {argv[-1]} failed ({done.returncode}): "
                f"{done.stdout}{done.stderr}{self.log()}"
            )


def _os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresClusterError(
            f"no {OS_USER} user (Debian's postgresql package creates it)"
        ) from None


def _as_postgres(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # The caller's PG* variables (PGDATA, PGPORT ...) must not steer our cluster elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return subprocess.run(
        ["runuser", "-u", OS_USER, "--", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a database name for tests: {name!r} (use [a-z_][a-z0-9_]*)")


def _alive(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is still one of this cluster's processes (not a zombie, not a reused pid:
    the postmaster and its backends are the postgres binary, started for this data dir or
    forked from the postmaster that was)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if stat.rpartition(")")[2].split()[0] == "Z":
        return False
    return str(data_dir).encode() in cmdline or cmdline.startswith(b"postgres:")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], data_dir: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_INTERVAL) + 1):
        if not any(_alive(pid, data_dir) for pid in pids):
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    return False


def _wait_reaped(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_INTERVAL) + 1):
        if not Path(f"/proc/{pid}").exists():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    return False
