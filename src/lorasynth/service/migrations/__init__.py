"""Alembic migrations of the service database (script location for alembic.command)."""
