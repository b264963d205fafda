"""Alembic's entry point: migrate the connection that `evo.storage.store` hands over.

There is no alembic.ini: evo opens the database itself (with its SQLite pragmas) and
runs the migrations inside its own connection, in batch mode so that SQLite can alter
tables by copying them.
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
