"""Alembic environment for the HSS schema.

Migrations run inside a connection the caller already holds (``config.attributes
["connection"]``): `imsaka.hss.store.migrate` opens it on the async engine, takes a
PostgreSQL advisory lock so two HSS processes starting together do not race, and
runs the upgrade there. There is no alembic.ini; nothing here reads a URL.
"""

from __future__ import annotations

from alembic import context

from imsaka.hss.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable by running `alembic` by hand
    raise RuntimeError("run HSS migrations through imsaka.hss.store.migrate()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # Our own version table: the HSS schema may share a database with other users.
    version_table="hss_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
