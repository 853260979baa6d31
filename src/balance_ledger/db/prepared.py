"""Statements of the hottest path run on the driver's own cursor, prepared on the server.

SQLAlchemy's execution (parameter processing, events, result objects) cost more client
CPU than the round trip itself on the single-movement path. A ``Prepared`` statement is
compiled once, for the connection's dialect, and run with ``cursor.execute(…,
prepare=True)`` (or, for a statement whose best plan depends on the tables' sizes,
unprepared); what SQLAlchemy would have done around it and that the ledger relies
on is done here: the engine's cursor events run, driver errors become SQLAlchemy's
``DBAPIError`` (the transaction runner's retries and typed errors, a lost connection
invalidated), the runner learns a statement ran, and the columns read are given their
types' result processing.

Parameters go to the driver as they are: ints, strs, bools and aware UTC datetimes
(clock.now()), which is what the columns' own bind processing would make of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import Select

from .transactions import ran

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    fixed: dict[str, Any]  # the values the statement carries itself (literals compared to)
    names: list[str]  # of the columns it returns
    processors: list[Processor]  # their types' result processing


class Prepared:
    """One statement that returns rows, compiled on first use for the dialect it is run on.

    ``planned_each_run``: sent unprepared, so the server plans it for the tables as
    they are (dialects.planned_each_run says why a statement that reads the ledger is).
    """

    def __init__(self, statement: Select[Any], *, planned_each_run: bool = False) -> None:
        self._statement = statement
        self._compiled: dict[str, _Compiled] = {}
        self._prepare = not planned_each_run

    def _for(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self._statement.compile(dialect=dialect)
            columns = self._statement.selected_columns
            processors: list[Processor] = [c.type.result_processor(dialect, None) for c in columns]
            found = _Compiled(
                sql=str(compiled),
                fixed={k: v for k, v in compiled.params.items() if v is not None},
                names=[str(column.key) for column in columns],
                processors=processors,
            )
            self._compiled[dialect.name] = found
        return found

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run it; its first row by column name, or None."""
        compiled = self._for(conn.dialect)
        row = _execute(conn, compiled.sql, {**compiled.fixed, **params}, self._prepare)
        if row is None:
            return None
        return {
            name: value if process is None else process(value)
            for name, value, process in zip(compiled.names, row, compiled.processors, strict=True)
        }


def _execute(
    conn: Connection, sql: str, params: dict[str, Any], prepare: bool
) -> tuple[Any, ...] | None:
    dialect = conn.dialect
    dbapi_connection = conn.connection.driver_connection
    cursor = dbapi_connection.cursor()  # type: ignore[union-attr]
    dispatch = conn.dispatch  # the engine's cursor events run as for any statement
    try:
        for before in dispatch.before_cursor_execute:
            sql, params = before(conn, cursor, sql, params, None, False)
        cursor.execute(sql, params, prepare=prepare)
        for after in dispatch.after_cursor_execute:
            after(conn, cursor, sql, params, None, False)
        row: tuple[Any, ...] | None = cursor.fetchone()
    except dialect.loaded_dbapi.Error as error:
        lost = dialect.is_disconnect(error, dbapi_connection, cursor)
        if lost:
            conn.invalidate(error)
        raise DBAPIError.instance(
            sql,
            params,
            error,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=dialect,
        ) from error
    finally:
        cursor.close()
    ran(conn)
    return row
