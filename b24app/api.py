"""Calls from the app page back to the backend, authenticated by the page's signed token."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api")
