"""The ledger is append-only, and the database itself says so.

Triggers reject every UPDATE and DELETE of ``user_balance_transactions``, whoever
sends it: corrections are new compensating rows (refunds, adjustments). Installed by
migration 0005; the statements live here so that the migration and the test suite's
deliberate-tampering helper use the very same ones.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

MESSAGE = "user_balance_transactions is append-only; correct it with a compensating row"

_POSTGRESQL_CREATE = [
    f"""
    CREATE OR REPLACE FUNCTION balance_ledger_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{MESSAGE} (% refused)', TG_OP USING ERRCODE = 'restrict_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER user_balance_transactions_append_only
    BEFORE UPDATE OR DELETE ON user_balance_transactions
    FOR EACH ROW EXECUTE FUNCTION balance_ledger_append_only()
    """,
]
_POSTGRESQL_DROP = [
    "DROP TRIGGER IF EXISTS user_balance_transactions_append_only ON user_balance_transactions",
    "DROP FUNCTION IF EXISTS balance_ledger_append_only()",
]

_OPERATIONS = ("UPDATE", "DELETE")


def _mariadb_create() -> list[str]:
    return [
        f"""
        CREATE TRIGGER user_balance_transactions_no_{op.lower()}
        BEFORE {op} ON user_balance_transactions FOR EACH ROW
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{MESSAGE} ({op} refused)'
        """
        for op in _OPERATIONS
    ]


def _sqlite_create() -> list[str]:
    return [
        f"""
        CREATE TRIGGER user_balance_transactions_no_{op.lower()}
        BEFORE {op} ON user_balance_transactions
        BEGIN SELECT RAISE(ABORT, '{MESSAGE} ({op} refused)'); END
        """
        for op in _OPERATIONS
    ]


def _drop_per_operation() -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS user_balance_transactions_no_{op.lower()}" for op in _OPERATIONS
    ]


def _statements(dialect: str, *, create: bool) -> list[str]:
    if dialect == "postgresql":
        return _POSTGRESQL_CREATE if create else _POSTGRESQL_DROP
    if dialect in ("mysql", "mariadb"):
        return _mariadb_create() if create else _drop_per_operation()
    return _sqlite_create() if create else _drop_per_operation()


def install_append_only(conn: Connection) -> None:
    for statement in _statements(conn.dialect.name, create=True):
        conn.execute(text(statement))


def remove_append_only(conn: Connection) -> None:
    for statement in _statements(conn.dialect.name, create=False):
        conn.execute(text(statement))
