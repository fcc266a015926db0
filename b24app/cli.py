"""Command-line commands: ``flask --app wsgi db-upgrade | serve | scheduler``."""

import click
from flask import current_app


def init_app(app):
    """Register the app's commands."""
    app.cli.add_command(db_upgrade)


@click.command("db-upgrade")
def db_upgrade():
    """Apply all database migrations."""
    from b24app import migrations

    migrations.upgrade(current_app.config["DATABASE_URL"])
    click.echo("Database is up to date.")
