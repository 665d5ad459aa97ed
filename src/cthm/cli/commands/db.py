"""`cthm db ...`: the database schema by hand. `cthm serve` migrates at start anyway (replicas
on one PostgreSQL take turns); `db upgrade` is for doing it before, as a deployment step."""

from __future__ import annotations

from pathlib import Path

import click

from cthm.cli import render
from cthm.cli.commands.serve import config_option, data_dir_option, database_url_file_option
from cthm.cli.context import CliState, json_option, pass_state
from cthm.cli.errors import Failure, ServiceError


@click.group("db")
def db_group() -> None:
    """The database schema: its revision, and upgrading it (migrations)."""


@db_group.command("upgrade")
@data_dir_option("The server's data directory (its SQLite database). [env CTHM_DATA_DIR]")
@config_option("The server's TOML settings file, for its database. [env CTHM_CONFIG]")
@database_url_file_option()
@json_option
@pass_state
def upgrade(
    state: CliState,
    data_dir: Path | None,
    config_file: Path | None,
    database_url_file: Path | None,
) -> None:
    """Upgrade the database schema to this cthm's (idempotent).

    Safe beside running servers: on PostgreSQL migrations take an advisory lock, so this and
    starting replicas migrate once. A new SQLite database is created in the data directory.
    """
    # Imported here: the store stack is not needed by the client commands.
    from cthm.cli.commands.serve import _settings as load_settings_or_fail
    from cthm.cli.service import open_store, prepare_data_dir, redact_url
    from cthm.domain import CthmError
    from cthm.store.store import migration_head

    settings = load_settings_or_fail(
        config_file, data_dir=data_dir, database_url_file=database_url_file
    )
    url = settings.effective_database_url
    try:
        if not settings.database_url and not settings.database_url_file:
            prepare_data_dir(settings.data_dir)  # the default SQLite file lives there
        store = open_store(url)
        try:
            revision = store.current_revision()
        finally:
            store.close()
    except ServiceError as exc:
        raise Failure(exc.message) from None
    except CthmError as exc:
        shown = redact_url(url)
        raise Failure(f"cannot read the schema revision of {shown}: {exc.message}") from None
    head = migration_head()
    render.emit(
        state,
        {"revision": revision, "head": head},
        render.print_line,
        f"database {redact_url(url)}: schema at revision {revision} (this cthm's: {head})",
    )


@db_group.command("current")
@data_dir_option("The server's data directory (its SQLite database). [env CTHM_DATA_DIR]")
@config_option("The server's TOML settings file, for its database. [env CTHM_CONFIG]")
@database_url_file_option()
@json_option
@pass_state
def current(
    state: CliState,
    data_dir: Path | None,
    config_file: Path | None,
    database_url_file: Path | None,
) -> None:
    """Print the database's schema revision ("none": never migrated). Changes nothing."""
    from cthm.cli.commands.serve import _settings as load_settings_or_fail
    from cthm.cli.service import open_existing_store, redact_url
    from cthm.domain import CthmError
    from cthm.store.store import migration_head

    settings = load_settings_or_fail(
        config_file, data_dir=data_dir, database_url_file=database_url_file
    )
    try:
        store = open_existing_store(settings)
        try:
            revision = store.current_revision()
        finally:
            store.close()
    except ServiceError as exc:
        raise Failure(exc.message) from None
    except CthmError as exc:
        shown = redact_url(settings.effective_database_url)
        raise Failure(f"cannot read the schema revision of {shown}: {exc.message}") from None
    head = migration_head()
    render.emit(state, {"revision": revision, "head": head}, render.print_line, revision or "none")
