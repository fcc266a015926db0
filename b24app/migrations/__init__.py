"""Schema migrations (Alembic), applied with ``flask --app wsgi db-upgrade``."""

import os

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from b24app.db import create_private_sqlite_file

MIGRATIONS_DIR = os.path.dirname(os.path.abspath(__file__))


def alembic_config(database_url):
    """Return an Alembic configuration that migrates the database at ``database_url``."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS_DIR)
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url, revision="head"):
    """Bring the database at ``database_url`` up to ``revision``."""
    if database_url.startswith("sqlite"):
        create_private_sqlite_file(database_url)
    command.upgrade(alembic_config(database_url), revision)


def is_up_to_date(database_url):
    """Return whether the database at ``database_url`` has every migration applied."""
    heads = ScriptDirectory.from_config(alembic_config(database_url)).get_heads()
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()
    return set(current) == set(heads)
