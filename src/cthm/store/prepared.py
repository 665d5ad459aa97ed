"""The API write path's hottest Core statements, run on SQLite straight on the driver.

SQLAlchemy's execute path (cache key, execution context, events, result metadata) costs
several times sqlite3's own work on these short statements: with the BEGIN, about a fifth of
an API binding create's CPU (callgrind of `cthm serve`, per create: 4.4 M instructions with
it, 3.5 M without). A `Prepared` statement is compiled by SQLAlchemy once per dialect and
parameter set, and then run as SQLAlchemy would: the same SQL, the parameters through the
same bind processors (JSON, UTC datetimes), the result columns through the same result
processors, errors raised as the same SQLAlchemy exceptions (IntegrityError, StatementError).

It runs on SQLite only, in the transaction of the connection given (begun by SQLAlchemy as
always). Everything else, and any statement whose compiled form needs more than this does
(column defaults computed in Python, expanding or literal parameters, a schema map), goes
through `Connection.execute`, as does every statement while anything listens to the engine's
cursor events (tests counting statements see all of them).
"""

from __future__ import annotations

import keyword
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

_Processor = Callable[[Any], Any]
# A positional parameter: the caller's parameter it takes (None: a constant of the statement),
# the constant (processed), and the bind processor of the caller's value (None: none).
_Source = tuple[str | None, Any, _Processor | None]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """What running one compiled form takes: its SQL, where each positional parameter comes
    from, and how a result row is built (None: the statement returns no rows)."""

    sql: str
    sources: tuple[_Source, ...]
    row: type[tuple[Any, ...]] | None
    results: tuple[_Processor | None, ...]


class Prepared:
    """statement: a Core statement built once (module level). Not for executemany."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        # (the dialect's class, the parameters' names) -> the compiled form, or None: not
        # runnable here. By class, not instance: every SQLite engine of cthm is made alike
        # (store/engine.py), and a cache by instance would keep each test's engine's alive.
        self._forms: dict[tuple[type[Dialect], tuple[str, ...]], _Compiled | None] = {}

    def rows(self, connection: Connection, params: Mapping[str, Any]) -> Sequence[Any]:
        """The rows the statement returns (named tuples: attribute access, `_asdict()`), or
        SQLAlchemy's Rows where it ran them itself."""
        form = self._form(connection, params)
        if form is None:
            return connection.execute(self.statement, dict(params)).all()
        return _run(connection, form, params)

    def one_or_none(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """The one row returned, None if none; more than one is an error (as SQLAlchemy's)."""
        found = self.rows(connection, params)
        if len(found) > 1:
            raise RuntimeError("a statement expected to return one row returned several")
        return found[0] if found else None

    def run(self, connection: Connection, params: Mapping[str, Any]) -> None:
        """Runs a statement returning nothing (an INSERT, an UPDATE)."""
        form = self._form(connection, params)
        if form is None:
            connection.execute(self.statement, dict(params))
            return
        _run(connection, form, params)

    def _form(self, connection: Connection, params: Mapping[str, Any]) -> _Compiled | None:
        dialect = connection.dialect
        if dialect.name != "sqlite":
            return None
        # The engine's own dispatch (it holds the Engine class's listeners too): a connection's
        # is made afresh per connection, and each attribute read of it builds a listener list.
        dispatch = connection.engine.dispatch
        if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
            return None
        key = (type(dialect), tuple(sorted(params)))
        try:
            form = self._forms[key]
        except KeyError:
            try:
                form = _compile(self.statement, dialect, key[1])
            except AttributeError:  # SQLAlchemy's compiled form changed shape: its own path
                form = None
            self._forms[key] = form
        if form is None or not _in_transaction(connection):
            return None
        return form


def _in_transaction(connection: Connection) -> bool:
    """Whether the statement may run on the driver now: in the connection's transaction, begun
    now if there is none, as SQLAlchemy's execute begins one. False for a transaction that
    failed and awaits its rollback: SQLAlchemy's execute raises what it raises for that."""
    transaction = connection.get_transaction()
    if transaction is None:
        connection._autobegin()  # what Connection.execute does first
        return connection.in_transaction()
    return transaction.is_active


def _run(connection: Connection, form: _Compiled, params: Mapping[str, Any]) -> list[Any]:
    dialect = connection.dialect
    values: Any = params
    try:
        values = [
            constant if key is None else params[key] if bind is None else bind(params[key])
            for key, constant, bind in form.sources
        ]
        driver: Any = connection.connection.driver_connection
        cursor = driver.execute(form.sql, values)
        try:
            fetched = cursor.fetchall()
        finally:
            cursor.close()
    except Exception as exc:  # raised as SQLAlchemy would: DBAPIError's or StatementError
        raise DBAPIError.instance(
            form.sql, values, exc, dialect.loaded_dbapi.Error, dialect=dialect
        ) from exc
    row, results = form.row, form.results
    if row is None:
        return []
    return [
        row._make([value if p is None else p(value) for p, value in zip(results, raw, strict=True)])  # type: ignore[attr-defined]
        for raw in fetched
    ]


def _compile(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled | None:
    """The statement compiled for `dialect` with these parameters, as SQLAlchemy compiles it
    to execute it; None if it needs what `Prepared` does not do."""
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    if (
        not compiled.positional
        or compiled.positiontup is None
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled.schema_translate_map
        or compiled.escaped_bind_names
    ):
        return None
    processors = compiled._bind_processors
    by_name: dict[str, _Source] = {}
    for bind, name in compiled.bind_names.items():
        processor = processors.get(name)
        if bind.key in keys:
            by_name[name] = (bind.key, None, processor)
        elif bind.callable is None and not bind.required:  # a constant: `+ 1`, a literal
            value = bind.value if processor is None else processor(bind.value)
            by_name[name] = (None, value, None)
        else:
            return None
    columns = compiled._result_columns
    row: type[tuple[Any, ...]] | None = None
    results: tuple[_Processor | None, ...] = ()
    if columns:
        names = [column[0] for column in columns]
        if len(set(names)) != len(names) or not all(_usable_name(n) for n in names):
            return None
        row = _row_type(names)
        results = tuple(column[3]._cached_result_processor(dialect, None) for column in columns)
    return _Compiled(
        sql=compiled.string,
        sources=tuple(by_name[name] for name in compiled.positiontup),
        row=row,
        results=results,
    )


def _row_type(names: list[str]) -> type[tuple[Any, ...]]:
    """A named tuple of these fields: attribute access and `_asdict()`, as a Row has."""
    made: type[tuple[Any, ...]] = namedtuple("PreparedRow", names)  # type: ignore[misc]
    return made


def _usable_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name.isidentifier()
        and not keyword.iskeyword(name)
        and not name.startswith("_")
    )
