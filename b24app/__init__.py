"""A backend for a Bitrix24 local application that opens inside the Bitrix24 frame."""

import logging
import os

from dotenv import load_dotenv
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from b24app import bitrix, db, encryption, eventlog, logsafe
from b24app.config import ConfigError, load_config
from b24app.encryption import TokenKeyError
from b24app.safejson import JSONProvider

log = logging.getLogger(__name__)

# The app's JSON APIs: every answer is JSON, refusals of the request itself included.
JSON_PATHS = ("/api/", "/admin/api/")

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def create_app(test_config=None):
    """Create and configure the app; mount the sandbox portal when in sandbox mode."""
    load_dotenv(os.path.join(PROJECT_ROOT, ".env"))
    app = Flask(
        __name__,
        instance_path=os.environ.get("B24_INSTANCE_PATH")
        or os.path.join(PROJECT_ROOT, "instance"),
        template_folder=os.path.join(PROJECT_ROOT, "templates"),
        static_folder=os.path.join(PROJECT_ROOT, "static"),
    )
    app.json = JSONProvider(app)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.from_mapping(load_config(app.instance_path))
    if test_config:
        app.config.from_mapping(test_config)
    _configure_logging(app.config["LOG_LEVEL"])

    db.init_app(app)
    encryption.init_app(app)
    eventlog.init_app(app)
    bitrix.init_app(app)

    from b24app import admin, api, cli, events, pages

    app.register_error_handler(HTTPException, _http_error)
    app.register_blueprint(pages.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(api.bp)
    admin.init_app(app)
    cli.init_app(app)

    if app.config["SANDBOX"]:
        from b24app import sandbox

        sandbox.mount(app)
        log.info(
            "Sandbox mode: app at %s, sandbox portal at %s",
            app.config["PUBLIC_URL"],
            app.config["SANDBOX_URL"],
        )
    else:
        log.info(
            "Production mode: app at %s for client_id %s, OAuth server %s",
            app.config["PUBLIC_URL"],
            app.config["B24_CLIENT_ID"],
            app.config["OAUTH_SERVER"],
        )
    return app


def _http_error(error):
    """Answer a refused request (no such path, wrong method, too large) to a JSON API in JSON,
    and any other as Flask does."""
    if request.path.startswith(JSON_PATHS):
        return jsonify(error=error.description), error.code
    return error


def _configure_logging(level):
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Every line that reaches these handlers is masked: our loggers', werkzeug's request lines,
    # urllib3's and tracebacks all propagate to the root. Gunicorn's error and access loggers
    # have handlers of their own, made before the app: masked too. Not covered: handlers added
    # after the app is created, e.g. when gunicorn rebuilds its handlers on a HUP with --preload.
    logsafe.install(
        root, logging.getLogger("gunicorn.error"), logging.getLogger("gunicorn.access")
    )
    logging.getLogger("b24app").setLevel(level)
    # urllib3 logs every request's URL at debug level: worth seeing only when debugging.
    logging.getLogger("urllib3").setLevel(level if level == "DEBUG" else logging.WARNING)
    # APScheduler logs every run of every job; the scheduler logs what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


__all__ = ["ConfigError", "TokenKeyError", "create_app"]
