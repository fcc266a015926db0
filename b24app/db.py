"""The database: one SQLAlchemy engine per app, sessions scoped to the thread that uses them."""

from contextlib import contextmanager

from flask import current_app
from sqlalchemy import create_engine, event
from sqlalchemy.orm import scoped_session, sessionmaker


def init_app(app):
    """Create the app's engine and session factory, and end each request's session."""
    url = app.config["DATABASE_URL"]
    options = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # The scheduler and the request threads write concurrently: wait for the lock.
        options["connect_args"] = {"timeout": 30, "check_same_thread": False}
    engine = create_engine(url, **options)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _configure_sqlite)
    app.extensions["b24app.db"] = scoped_session(
        sessionmaker(bind=engine, expire_on_commit=False)
    )
    app.teardown_appcontext(lambda exc: app.extensions["b24app.db"].remove())


def _configure_sqlite(connection, record):
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def get_session():
    """Return this thread's session for the current app."""
    return current_app.extensions["b24app.db"]()


@contextmanager
def transaction():
    """Yield this thread's session and commit on success, roll back on any error."""
    session = get_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
