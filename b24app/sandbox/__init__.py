"""The sandbox portal: a local stand-in for a Bitrix24 portal, its OAuth server and push server.

:func:`mount` builds a second Flask app for the portal side and serves it from the same server
as the app, chosen by the request's Host: ``SANDBOX_URL``'s host goes to the portal, every other
host to the app. The portal's state (:class:`~b24app.sandbox.state.SandboxState`) is kept at
``app.extensions["sandbox"]``.

Modules: ``state`` (portals, users, tokens, channels, records), ``oauth`` (the OAuth server),
``rest`` (the REST API), ``push`` (the push server), ``portal`` (the portal pages) and ``events``
(delivery of events to bound handlers).
"""

import logging
import os
from urllib.parse import urlsplit

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from b24app.logsafe import MaskingFilter
from b24app.safejson import JSONProvider
from b24app.sandbox.state import SandboxState

log = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class HostDispatcher:
    """Send requests for the sandbox's host to the portal app and all others to the app.

    :param sandbox_host: ``host[:port]`` of ``SANDBOX_URL``, normalized.
    :param app_host: ``host[:port]`` of ``PUBLIC_URL``, normalized.
    """

    def __init__(self, app_wsgi, portal_wsgi, sandbox_host, app_host):
        self.app_wsgi = app_wsgi
        self.portal_wsgi = portal_wsgi
        self.sandbox_host = sandbox_host
        self.sandbox_hostname = sandbox_host.rsplit(":", 1)[0]
        # Some WebSocket clients (simple_websocket's) send the Host without its port; such a
        # Host still names the sandbox when the app lives on another host name.
        self.bare_host_is_sandbox = self.sandbox_hostname != app_host.rsplit(":", 1)[0]

    def __call__(self, environ, start_response):
        """Dispatch one WSGI request by its Host header."""
        host = environ.get("HTTP_HOST") or "{}:{}".format(
            environ.get("SERVER_NAME", ""), environ.get("SERVER_PORT", "")
        )
        host = normalize_host(host, environ.get("wsgi.url_scheme", "http"))
        if host == self.sandbox_host or (
            self.bare_host_is_sandbox and host == self.sandbox_hostname
        ):
            return self.portal_wsgi(environ, start_response)
        return self.app_wsgi(environ, start_response)


def normalize_host(host, scheme):
    """Return ``host`` in lower case without the scheme's default port."""
    host = host.strip().lower()
    default = ":443" if scheme in ("https", "wss") else ":80"
    return host.removesuffix(default)


def create_portal_app(app, state):
    """Create the Flask app that serves the portal side: pages, OAuth, REST and push."""
    portal_app = Flask(
        __name__,
        template_folder=os.path.join(PROJECT_ROOT, "templates"),
        static_folder=os.path.join(PROJECT_ROOT, "static"),
    )
    portal_app.config.update(
        TESTING=app.config.get("TESTING", False),
        SECRET_KEY=app.config["SECRET_KEY"],
        SANDBOX_URL=app.config["SANDBOX_URL"],
        PUBLIC_URL=app.config["PUBLIC_URL"],
    )
    portal_app.json = JSONProvider(portal_app)
    # Keep keys in the order the protocol lists them, as a portal's JSON has them.
    portal_app.json.sort_keys = False
    portal_app.extensions["sandbox"] = state

    from b24app.sandbox import oauth, portal, push, rest

    portal_app.register_blueprint(portal.bp)
    portal_app.register_blueprint(oauth.bp)
    portal_app.register_blueprint(rest.bp)
    push.init_app(portal_app)

    @portal_app.errorhandler(Exception)
    def answer_error(error):
        """Answer any failure in the portal's own envelope, never with a stack trace."""
        if isinstance(error, HTTPException):
            status, description = error.code, error.description
        else:
            log.exception("Sandbox portal failed on %s %s", request.method, request.path)
            status, description = 500, "Internal server error"
        if request.path.startswith(("/rest/", "/oauth-server/")):
            code = {404: "ERROR_METHOD_NOT_FOUND", 405: "INVALID_REQUEST"}.get(
                status, "INTERNAL_SERVER_ERROR" if status >= 500 else "INVALID_REQUEST"
            )
            response = jsonify(error=code, error_description=description)
            response.headers["Access-Control-Allow-Origin"] = "*"
            return response, status
        return description, status, {"Content-Type": "text/plain; charset=utf-8"}

    return portal_app


def mount(app):
    """Serve the sandbox portal from ``app`` for requests addressed to ``SANDBOX_URL``."""
    state = SandboxState(app.config)
    portal_app = create_portal_app(app, state)
    app.extensions["sandbox"] = state
    app.extensions["sandbox_portal_app"] = portal_app

    sandbox_parts = urlsplit(app.config["SANDBOX_URL"])
    app_parts = urlsplit(app.config["PUBLIC_URL"])
    app.wsgi_app = HostDispatcher(
        app.wsgi_app,
        portal_app.wsgi_app,
        normalize_host(sandbox_parts.netloc, sandbox_parts.scheme),
        normalize_host(app_parts.netloc, app_parts.scheme),
    )
    # The portal's request lines carry tokens and the client secret in their URLs. The app's
    # handlers mask every line; masking the records too keeps them out of handlers added later.
    werkzeug_log = logging.getLogger("werkzeug")
    if not any(isinstance(existing, MaskingFilter) for existing in werkzeug_log.filters):
        werkzeug_log.addFilter(MaskingFilter())
    return state
