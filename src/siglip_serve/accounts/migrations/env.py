"""Alembic's environment, for programmatic use only: `accounts.db.migrate` passes an open connection in
``config.attributes["connection"]`` (Alembic cookbook, "Sharing a Connection across one or more programmatic
migration commands"), so there is no alembic.ini, no URL here and no logging configuration of Alembic's own.
"""

from __future__ import annotations

from alembic import context

from siglip_serve.accounts.schema import VERSION_TABLE, Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the accounts migrations through siglip_serve.accounts.db.migrate")
# render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table (Alembic docs,
# "Running 'Batch' Migrations for SQLite and Other Databases").
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                  render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
