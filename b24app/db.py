"""The database: one SQLAlchemy engine per app; each unit of work gets a short-lived session.

Sessions are never kept open between units of work, so a long-running thread (the scheduler)
always reads what other threads and processes have committed.

A :func:`transaction` that selects rows ``with_for_update()`` holds them until it ends: a row lock
on PostgreSQL; on SQLite, which has no row locks, every transaction of :func:`transaction` is an
immediate one (``BEGIN IMMEDIATE``), holding the database's write lock from its first statement.
"""

import os
from contextlib import contextmanager

from flask import current_app
from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import sessionmaker

from b24app.config import ConfigError

# The execution option that marks a connection's transaction as one that writes.
_WRITING = "b24app_writing"


def init_app(app):
    """Create the app's engine and session factory."""
    url = app.config["DATABASE_URL"]
    options = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # The scheduler and the request threads write concurrently: wait for the lock, which
        # a token refresh holds while the OAuth server answers (see store.renew_tokens).
        timeout = app.config.get("OAUTH_TIMEOUT", 30.0) + 30
        options["connect_args"] = {"timeout": timeout, "check_same_thread": False}
    try:
        engine = create_engine(url, **options)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise ConfigError(f"DATABASE_URL is not a usable database URL ({exc}).") from None
    if url.startswith("sqlite"):
        create_private_sqlite_file(url)
        event.listen(engine, "connect", _configure_sqlite)
        event.listen(engine, "begin", _begin_sqlite)
    app.extensions["b24app.db"] = sessionmaker(bind=engine, expire_on_commit=False)


def create_private_sqlite_file(url):
    """Create the SQLite file of ``url``, readable by its owner only, if it does not exist yet.

    The database holds the portals' tokens. SQLite gives its journal files the database file's
    permissions; a file that already exists keeps the ones it has.
    """
    url = make_url(url)
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if path.startswith("file:") or url.query.get("uri"):
        # Not handled yet: URI file names (sqlite:///file:...?uri=true) get the default umask.
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:
        # A missing folder, say: SQLite reports it, with its own words, when it opens the file.
        pass


def use_wal(connection):
    """Put the SQLite database of DB-API ``connection`` in WAL mode, which the file then keeps.

    Switching needs the database to itself, and SQLite answers "database is locked" at once,
    without waiting, when another connection is reading it; a database already in WAL mode, as
    ``db-upgrade`` leaves it, is not switched again.
    """
    cursor = connection.cursor()
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _configure_sqlite(connection, record):
    use_wal(connection)
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # The driver would begin transactions itself, late and always deferred; _begin_sqlite
    # begins them instead.
    connection.isolation_level = None


def _begin_sqlite(connection):
    if connection.get_execution_options().get(_WRITING):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


@contextmanager
def reading():
    """Yield a session for reads; objects read stay usable after it closes."""
    with current_app.extensions["b24app.db"]() as session:
        yield session


@contextmanager
def transaction():
    """Yield a session in a transaction: committed on success, rolled back on any error."""
    with current_app.extensions["b24app.db"]() as session, session.begin():
        session.connection(execution_options={_WRITING: True})
        yield session
