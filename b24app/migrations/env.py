"""Alembic environment: migrates the database named by the app's DATABASE_URL."""

from alembic import context
from sqlalchemy import create_engine

from b24app.db import use_wal
from b24app.models import Base

config = context.config
url = config.attributes["database_url"]


def run_migrations_offline():
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = create_engine(url)
    with engine.connect() as connection:
        if url.startswith("sqlite"):
            use_wal(connection.connection.dbapi_connection)
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=url.startswith("sqlite"),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
