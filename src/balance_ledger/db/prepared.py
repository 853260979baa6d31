"""Statements of the hottest path run on the driver's own cursor, prepared on the server.

SQLAlchemy's execution (parameter processing, events, result objects) cost more client
CPU than the round trip itself on the single-movement path. A ``Prepared`` statement is
compiled once, for the connection's dialect, and run with ``cursor.execute(…,
prepare=True)``; what SQLAlchemy would have done around it and that the ledger relies
on is done here: the engine's cursor events run, driver errors become SQLAlchemy's
``DBAPIError`` (the transaction runner's retries and typed errors, a lost connection
invalidated), the runner learns a statement ran, and the columns read are given their
types' result processing.

Parameters go to the driver as they are: ints, strs, bools and aware UTC datetimes
(clock.now()), which is what the columns' own bind processing would make of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import Select

from .transactions import ran

Processor = Callable[[Any], Any] | None


class Prepared:
    """One statement, compiled on first use for the dialect it is run on."""

    def __init__(self, statement: Executable) -> None:
        self._statement = statement
        self._compiled: dict[str, tuple[str, dict[str, Any], list[str], list[Processor]]] = {}

    def _for(self, dialect: Dialect) -> tuple[str, dict[str, Any], list[str], list[Processor]]:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self._statement.compile(dialect=dialect)  # type: ignore[attr-defined]
            names: list[str] = []
            processors: list[Processor] = []
            if isinstance(self._statement, Select):
                for column in self._statement.selected_columns:
                    names.append(str(column.key))
                    processors.append(column.type.result_processor(dialect, None))
            # The values the statement carries itself (literals compared against).
            fixed = {k: v for k, v in compiled.params.items() if v is not None}
            found = (str(compiled), fixed, names, processors)
            self._compiled[dialect.name] = found
        return found

    def first(self, conn: Connection, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run it (a statement that returns rows); its first row by column name, or None."""
        sql, fixed, names, processors = self._for(conn.dialect)
        row = _execute(conn, sql, {**fixed, **params})
        if row is None:
            return None
        if not names:
            return {str(i): value for i, value in enumerate(row)}
        return {
            name: value if process is None else process(value)
            for name, value, process in zip(names, row, processors, strict=True)
        }


def _execute(conn: Connection, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    dialect = conn.dialect
    dbapi_connection = conn.connection.driver_connection
    cursor = dbapi_connection.cursor()  # type: ignore[union-attr]
    dispatch = conn.dispatch  # the engine's cursor events run as for any statement
    try:
        for before in dispatch.before_cursor_execute:
            sql, params = before(conn, cursor, sql, params, None, False)
        cursor.execute(sql, params, prepare=True)
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
