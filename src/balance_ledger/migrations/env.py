"""Alembic environment: runs against the engine handed over by db/migrate.py."""

from alembic import context

from balance_ledger.db.migrate import VERSION_TABLE
from balance_ledger.db.tables import metadata

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
