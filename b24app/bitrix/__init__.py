"""The Bitrix24 protocol as the app speaks it: frame handshake, OAuth server, REST, forms."""

from flask import current_app

from b24app.bitrix.oauth import OAuthClient
from b24app.bitrix.rest import RestClient


def init_app(app):
    """Create the app's OAuth and REST clients from its settings."""
    oauth = OAuthClient(
        app.config["OAUTH_SERVERS"],
        app.config["B24_CLIENT_ID"],
        app.config["B24_CLIENT_SECRET"],
        timeout=app.config["OAUTH_TIMEOUT"],
    )
    app.extensions["b24app.oauth"] = oauth
    app.extensions["b24app.rest"] = RestClient(
        oauth,
        timeout=app.config["REST_TIMEOUT"],
        attempts=app.config["REST_ATTEMPTS"],
        backoff_max=app.config["BACKOFF_MAX"],
    )


def oauth_client():
    """Return the current app's OAuth client."""
    return current_app.extensions["b24app.oauth"]


def rest_client():
    """Return the current app's REST client."""
    return current_app.extensions["b24app.rest"]
