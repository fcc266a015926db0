"""The pages a portal loads into its frame: the install page and the app page."""

from flask import Blueprint

bp = Blueprint("pages", __name__)
