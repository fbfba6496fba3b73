"""Alembic migrations of the key and usage schema (run by `accounts.db.migrate`, never by hand-written DDL)."""
