"""What the database itself enforces with triggers, whoever writes.

The ledger is append-only: triggers reject every UPDATE and DELETE of an append-only
table. Ledger corrections are new compensating rows (refunds, adjustments), and the
chain anchors are never rewritten. Migration 0005 guards ``user_balance_transactions`` and
0006 the anchor tables; the statements live here so that the migrations and the test
suite's deliberate-tampering helper use the very same ones.

A balance row's ``version`` goes up by one with every UPDATE of the row (migration
0011), whichever code or person sends it: a movement decided on version N is written
only while the row is still at N (money/post.py), so no change can slip in unseen.
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


BALANCES = "user_balances"
_VERSION_TRIGGER = f"{BALANCES}_version"


def install_versioning(conn: Connection) -> None:
    """Every UPDATE of a balance row sets its ``version`` to the old one plus one."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        statements = [
            """
            CREATE OR REPLACE FUNCTION balance_ledger_next_version() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                NEW.version := OLD.version + 1;
                RETURN NEW;
            END
            $$
            """,
            f"""
            CREATE TRIGGER {_VERSION_TRIGGER} BEFORE UPDATE ON {BALANCES}
            FOR EACH ROW EXECUTE FUNCTION balance_ledger_next_version()
            """,
        ]
    elif dialect in ("mysql", "mariadb"):
        statements = [
            f"""
            CREATE TRIGGER {_VERSION_TRIGGER} BEFORE UPDATE ON {BALANCES}
            FOR EACH ROW SET NEW.version = OLD.version + 1
            """
        ]
    else:  # SQLite cannot assign NEW: the row is updated again (triggers do not recurse)
        statements = [
            f"""
            CREATE TRIGGER {_VERSION_TRIGGER} AFTER UPDATE ON {BALANCES} FOR EACH ROW
            BEGIN
                UPDATE {BALANCES} SET version = OLD.version + 1 WHERE user_id = NEW.user_id;
            END
            """
        ]
    for statement in statements:
        conn.execute(text(statement))


def remove_versioning(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"DROP TRIGGER IF EXISTS {_VERSION_TRIGGER} ON {BALANCES}"))
        conn.execute(text("DROP FUNCTION IF EXISTS balance_ledger_next_version()"))
    else:
        conn.execute(text(f"DROP TRIGGER IF EXISTS {_VERSION_TRIGGER}"))
