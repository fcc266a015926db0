"""The WSGI entry point: ``gunicorn wsgi:app`` or ``flask --app wsgi …``."""

from b24app import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:
    # A missing setting is the operator's to fix: say which, without a traceback.
    raise SystemExit(f"b24app cannot start: {exc}") from None
