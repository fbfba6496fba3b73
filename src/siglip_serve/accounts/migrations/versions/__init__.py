"""Alembic revisions, oldest first; a package so that the installed wheel carries them."""
