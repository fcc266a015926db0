"""The `flask --app wsgi` commands: db-upgrade, rotate-token-keys, serve, scheduler, admin-link."""

import logging
import math
import signal
import threading
from contextlib import contextmanager

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)


def init_app(app):
    """Register the app's commands."""
    app.cli.add_command(db_upgrade)
    app.cli.add_command(rotate_token_keys)
    app.cli.add_command(serve)
    app.cli.add_command(scheduler)
    app.cli.add_command(admin_link)


@click.command("db-upgrade")
@with_appcontext
def db_upgrade():
    """Apply all database migrations, then encrypt tokens stored by earlier versions."""
    from b24app import migrations
    from b24app.encryption import encrypt_stored_tokens

    with _database_errors():
        migrations.upgrade(current_app.config["DATABASE_URL"])
    encrypted = encrypt_stored_tokens()
    if encrypted:
        click.echo(f"Encrypted the tokens of {encrypted} portal(s) stored unencrypted.")
    click.echo("Database is up to date.")


@click.command("rotate-token-keys")
@with_appcontext
def rotate_token_keys():
    """Encrypt every stored token with the first key of TOKEN_ENCRYPTION_KEYS."""
    from b24app.encryption import TokenKeyError, encrypt_stored_tokens

    _require_migrated(current_app)
    try:
        changed = encrypt_stored_tokens(rotate=True)
    except TokenKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Encrypted the tokens of {changed} portal(s) with the first key.")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@with_appcontext
def serve(host, port):
    """Run the development server (threaded) with the ping scheduler inside it."""
    from werkzeug.serving import run_simple

    from b24app.scheduler import start_scheduler

    app = current_app._get_current_object()
    _require_migrated(app)
    _require_readable_tokens()
    running = start_scheduler(app) if app.config["SCHEDULER_IN_SERVER"] else None
    _stop_on_sigterm()
    if app.config["SANDBOX"]:
        click.echo(f"Open the sandbox portal: {app.config['SANDBOX_URL']}/")
    try:
        # flask-sock holds a thread per socket: the server must be threaded.
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        if running:
            running.shutdown()


@click.command("scheduler")
@with_appcontext
def scheduler():
    """Run the ping scheduler on its own, for production (stop with Ctrl-C)."""
    from b24app.scheduler import start_scheduler

    app = current_app._get_current_object()
    _require_migrated(app)
    _require_readable_tokens()
    running = start_scheduler(app)
    _stop_on_sigterm()
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        running.shutdown()


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that refuses nan too: a plain one lets it through."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{number} is not in the range {self._describe_range()}.", param, ctx)
        return number


@click.command("admin-link")
@click.option(
    "--hours",
    default=24.0,
    show_default=True,
    type=FiniteFloatRange(min=0, min_open=True, max=30 * 24),
    help="How long the link works.",
)
@with_appcontext
def admin_link(hours):
    """Print the operator's link to the admin page, showing every portal's events."""
    from b24app.admin import operator_link

    click.echo(operator_link(hours))
    click.echo(
        f"Valid for {hours:g} hours. Anyone holding it sees every portal's log: keep it private.",
        err=True,
    )


def _stop_on_sigterm():
    """Stop on SIGTERM, which service managers send, as on Ctrl-C: the scheduler is shut down
    and logs it, and the event log's queue is written out before the process exits."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _require_migrated(app):
    """Stop with a clear message when the database lacks migrations."""
    from b24app import migrations

    with _database_errors():
        up_to_date = migrations.is_up_to_date(app.config["DATABASE_URL"])
    if not up_to_date:
        raise click.ClickException(
            "The database is not up to date: run `flask --app wsgi db-upgrade` first."
        )


@contextmanager
def _database_errors():
    """Stop with one line, not a traceback, when the database cannot be reached or opened."""
    try:
        yield
    except DBAPIError as exc:
        # The driver's own words, first line only: "Connection refused", "unable to open ...".
        reason = (str(exc.orig).strip().splitlines() or [""])[0]
        raise click.ClickException(
            f"Cannot use the database at DATABASE_URL ({type(exc.orig).__name__}: {reason})."
        ) from None


def _require_readable_tokens():
    """Stop with a clear message when the stored tokens cannot be read with the configured keys."""
    # Not handled yet: gunicorn workers start without this check; a request that needs an
    # unreadable token gets a JSON 500 error and the log says why.
    from b24app.encryption import stored_token_problem

    problem = stored_token_problem()
    if problem:
        raise click.ClickException(f"Cannot start: {problem}")
