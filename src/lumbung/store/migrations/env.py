"""Alembic's entry point, run by ``SqlStore.open`` with the connection it already holds.

There is no alembic.ini: ``lumbung.store.sql`` builds the config in code and hands its connection
over in ``config.attributes["connection"]``, inside the transaction that holds the migration lock.
"""

from __future__ import annotations

from alembic import context

from lumbung.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with lumbung.store.sql.migrate, not the alembic CLI")

# render_as_batch lets later migrations alter columns on SQLite, which cannot ALTER most things.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
