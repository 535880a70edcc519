"""Alembic migrations of the HSS store (run programmatically by `imsaka.hss.store.migrate`)."""
