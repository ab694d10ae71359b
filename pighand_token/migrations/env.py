"""Alembic's environment: runs on the connection ``migrations.upgrade`` hands over."""

from __future__ import annotations

from alembic import context

from pighand_token.migrations import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
