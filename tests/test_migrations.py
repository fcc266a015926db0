"""The migrations build exactly the schema the models describe, on every database."""

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from b24app import migrations
from b24app.models import Base


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_migrated_schema_matches_the_models(database_url):
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
    assert migrations.is_up_to_date(database_url)


def test_an_upgraded_sqlite_file_is_left_in_wal_mode(tmp_path):
    # Processes that open it together then need not switch it, which SQLite refuses at once
    # ("database is locked") while another connection reads the file.
    path = tmp_path / "store.sqlite3"
    migrations.upgrade(f"sqlite:///{path}")
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()
