"""Alembic environment: the service passes its own connection in `config.attributes`;
offline (`upgrade --sql`, used to check the DDL for other databases) renders for the URL."""

from alembic import context

from lorasynth.service.models import Base

if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        literal_binds=True,
    )
else:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
