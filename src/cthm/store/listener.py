"""Changes committed by other processes on PostgreSQL: LISTEN cthm_changes.

Every transaction that writes the change log also runs `pg_notify('cthm_changes', '<revision>')`
(see hosts); PostgreSQL delivers the notification at commit, to every session listening on the
channel. The payload is only the revision: listeners read the changes again from the table.

One thread per process holds one dedicated connection, outside the pool: autocommit, in session
mode. A LISTEN belongs to its server session, so this connection must reach PostgreSQL directly
or through a pooler in session mode: PgBouncer's transaction pooling hands the session to other
clients between transactions and the notifications never arrive (then only the watch route's
periodic re-check notices changes of other replicas).

Notifications are not queued for a session that is gone: on any loss of the connection the
listener reconnects with a capped backoff and calls `on_change(None)` after every (re)connect,
so that the caller reads again from the revision it had (nothing is missed, only late).
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "cthm_changes"
CONNECT_TIMEOUT = 5
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 5.0
# A peer that vanished without closing (a cut network) is noticed within about
# idle + interval * count seconds by TCP keepalives, not at the next notification.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3}
KEEPALIVE_COUNT = 3

OnChange = Callable[[int | None], None]


def conninfo(url: str) -> str:
    """The libpq URI of a SQLAlchemy PostgreSQL URL (`postgresql+psycopg://...`): the same
    server, credentials and parameters (sslmode...). ValueError for another database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError("LISTEN needs a PostgreSQL URL")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    """LISTEN cthm_changes on a dedicated connection, in a thread of its own.

    on_change(revision) runs in that thread for every notification (revision None when the
    payload is not a revision) and after every (re)connect with None: notifications sent
    while it was not connected are lost, the caller reads again by revision. An exception
    in on_change is logged and the listener goes on.
    """

    def __init__(self, url: str, on_change: OnChange) -> None:
        self._conninfo = conninfo(url)
        password = make_url(url).password
        # Never in a log line, even where libpq quotes the connection string back.
        self._secrets = [] if not password else sorted({password, quote(password, safe="")})
        self._on_change = on_change
        self._stopping = threading.Event()
        self._connected = threading.Event()
        # stop() writes to this pipe to end a wait on the connection's socket at once.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._thread = threading.Thread(target=self._run, name="cthm-change-listener", daemon=True)
        self._started = False

    def start(self) -> None:
        """Starts the thread; it connects in the background (see wait_connected)."""
        self._started = True
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """True once the listener is connected and listening (False on timeout)."""
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Ends the thread (at once, even mid-wait or mid-backoff), joins it and closes the
        connection. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        os.write(self._wake_write, b"x")
        if self._started:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("change listener did not stop within %.0fs", timeout)
                return  # the pipe stays open: the thread may still select on it
        os.close(self._wake_read)
        os.close(self._wake_write)

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = FIRST_BACKOFF
        failed = False
        while not self._stopping.is_set():
            try:
                connection = self._connect()
            except (psycopg.Error, OSError) as exc:
                failed = self._lost(exc, failed)
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            try:
                if failed:
                    log.info("change listener: connected to the database again")
                failed = False
                backoff = FIRST_BACKOFF
                self._connected.set()
                self._deliver(None)  # whatever was sent while no one listened: read again
                self._listen(connection)
            except (psycopg.Error, OSError) as exc:
                failed = self._lost(exc, failed)
            finally:
                self._connected.clear()
                connection.close()
            if self._stopping.wait(backoff):  # a connection that fails at once: no busy loop
                return

    def _connect(self) -> psycopg.Connection[Any]:
        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "cthm-listener",
            "keepalives_count": KEEPALIVE_COUNT,
            **KEEPALIVES,
        }
        given = conninfo_to_dict(self._conninfo)
        options = {key: value for key, value in options.items() if key not in given}
        connection = psycopg.connect(self._conninfo, autocommit=True, **options)
        try:
            connection.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _listen(self, connection: psycopg.Connection[Any]) -> None:
        """Delivers notifications until the connection fails (psycopg.Error) or stop()."""
        pgconn = connection.pgconn
        with selectors.DefaultSelector() as selector:
            selector.register(pgconn.socket, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while True:
                # First what libpq has read already (with the LISTEN's answer, or below).
                while (notify := pgconn.notifies()) is not None:
                    self._deliver(_revision(notify.extra))
                selector.select()
                if self._stopping.is_set():
                    return
                # Reads what arrived; fails once the server closed the connection or the
                # socket broke (a restart, a cut network noticed by the keepalives).
                pgconn.consume_input()
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the connection is closed")

    def _deliver(self, revision: int | None) -> None:
        try:
            self._on_change(revision)
        except Exception:  # a subscriber's bug must not end the listening
            log.exception("change listener: callback failed")

    def _lost(self, exc: Exception, failed: bool) -> bool:
        """Logs a failure once per outage (later ones at DEBUG); returns True."""
        reason = _reason(exc)
        for secret in self._secrets:
            reason = reason.replace(secret, "***")
        if failed:
            log.debug("change listener: still cannot reach the database: %s", reason)
        else:
            log.warning("change listener: lost the database (%s); reconnecting", reason)
        return True


def _revision(payload: bytes) -> int | None:
    try:
        return int(payload)
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    """The first line of a driver error (libpq's name the server and the user)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
