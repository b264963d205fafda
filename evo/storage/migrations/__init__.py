"""Alembic migrations of the results database (run by `evo.storage.store`, not by hand)."""
