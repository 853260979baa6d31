"""The ledger is append-only, and the database itself says so.

Triggers reject every UPDATE and DELETE of an append-only table, whoever sends it:
ledger corrections are new compensating rows (refunds, adjustments), and the chain
anchors are never rewritten. Migration 0005 guards ``user_balance_transactions`` and
0006 the anchor tables; the statements live here so that the migrations and the test
suite's deliberate-tampering helper use the very same ones.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

LEDGER = "user_balance_transactions"
ANCHOR_TABLES = ("balance_chain_digests", "balance_chain_anchors")
APPEND_ONLY_TABLES = (LEDGER, *ANCHOR_TABLES)

_OPERATIONS = ("UPDATE", "DELETE")

# One PostgreSQL function serves every guarded table; it names the table it refused.
_POSTGRESQL_FUNCTION = """
    CREATE OR REPLACE FUNCTION balance_ledger_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only; correct it with a compensating row (% refused)',
            TG_TABLE_NAME, TG_OP USING ERRCODE = 'restrict_violation';
    END
    $$
"""


def _message(table: str, operation: str) -> str:
    return f"{table} is append-only; correct it with a compensating row ({operation} refused)"


def _create(dialect: str, table: str) -> list[str]:
    if dialect == "postgresql":
        return [
            _POSTGRESQL_FUNCTION,
            f"""
            CREATE TRIGGER {table}_append_only
            BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION balance_ledger_append_only()
            """,
        ]
    if dialect in ("mysql", "mariadb"):
        return [
            f"""
            CREATE TRIGGER {table}_no_{op.lower()}
            BEFORE {op} ON {table} FOR EACH ROW
            SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{_message(table, op)}'
            """
            for op in _OPERATIONS
        ]
    return [
        f"""
        CREATE TRIGGER {table}_no_{op.lower()}
        BEFORE {op} ON {table}
        BEGIN SELECT RAISE(ABORT, '{_message(table, op)}'); END
        """
        for op in _OPERATIONS
    ]


def _drop(dialect: str, table: str) -> list[str]:
    if dialect == "postgresql":
        return [f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}"]
    return [f"DROP TRIGGER IF EXISTS {table}_no_{op.lower()}" for op in _OPERATIONS]


def install_append_only(conn: Connection, tables: tuple[str, ...] = (LEDGER,)) -> None:
    for table in tables:
        for statement in _create(conn.dialect.name, table):
            conn.execute(text(statement))


def remove_append_only(conn: Connection, tables: tuple[str, ...] = (LEDGER,)) -> None:
    for table in tables:
        for statement in _drop(conn.dialect.name, table):
            conn.execute(text(statement))
