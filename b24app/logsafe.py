"""Tokens and secrets masked in log lines and in error texts that come from outside.

The Bitrix24 protocol carries tokens in query strings (the OAuth refresh is a GET with
``client_secret`` and ``refresh_token``), in form fields (``AUTH_ID``, ``auth[access_token]``) and
in JSON bodies, so a request line, a library's warning about a URL, a traceback or a portal's
error description can hold one. :func:`mask` hides the values and keeps the names, so a line
still says what was there::

    >>> mask("GET /oauth/token/?grant_type=refresh_token&refresh_token=abc123")
    'GET /oauth/token/?grant_type=refresh_token&refresh_token=[hidden]'

:func:`install` makes log handlers mask every line they write; the app factory calls it once.
"""

import logging
import re

HIDDEN = "[hidden]"

# Names whose values are tokens, secrets or private channel ids, in any letter case. A bracketed
# name counts by its last part: auth[access_token] is secret, auth[domain] is not.
SECRET_NAMES = frozenset(
    (
        "auth",
        "access_token",
        "refresh_token",
        "client_secret",
        "auth_id",
        "refresh_id",
        "application_token",
        "channel_id",
        # The app's own signed tokens: the operator link's and the page tokens.
        "token",
    )
)

_NAME = r"[\w\[\]%]+"
# name=value in query strings, form bodies and keyword reprs (name='value'). The name may be
# bracketed (auth[access_token]) or percent-encoded (auth%5Baccess_token%5D).
_PARAMETER = re.compile(rf"(?<![\w\[\]%])({_NAME})=(?:(\\?[\"'])(.*?)\2|[^&\s\"'<>\x00-\x1f]+)")
# "name": "value" in JSON, 'name': 'value' in dict reprs and ('name', 'value') in pair lists,
# with the quotes possibly escaped (JSON inside a string).
_QUOTED_PAIR = re.compile(rf"(\\?[\"'])({_NAME})\1(\s*[:,]\s*)(\\?[\"'])(.*?)\4")
_BEARER = re.compile(r"\b(bearer\s+)[\w\-.~+/]+=*", re.IGNORECASE)
# A Fernet token: how the tokens look in the database.
_FERNET = re.compile(r"gAAAAA[\w\-]{20,}=*")
_NAME_PARTS = re.compile(r"\[|\]|%5B|%5D", re.IGNORECASE)


def is_secret_name(name):
    """Return whether a parameter named ``name`` carries a token or a secret."""
    parts = [part for part in _NAME_PARTS.split(name) if part]
    return bool(parts) and parts[-1].lower() in SECRET_NAMES


def _hide_parameter(match):
    name, quote = match.group(1), match.group(2) or ""
    if not is_secret_name(name):
        return match.group(0)
    return f"{name}={quote}{HIDDEN}{quote}"


def _hide_quoted_pair(match):
    name_quote, name, separator, value_quote = match.group(1, 2, 3, 4)
    if not is_secret_name(name):
        return match.group(0)
    return f"{name_quote}{name}{name_quote}{separator}{value_quote}{HIDDEN}{value_quote}"


def mask(text):
    """Return ``text`` with the values of tokens, secrets and encrypted tokens hidden.

    It hides the values of the protocol's secret parameters (:data:`SECRET_NAMES`) as
    ``name=value`` (plain, bracketed or percent-encoded names) and as quoted JSON or repr
    pairs, ``Bearer`` credentials, and Fernet ciphertexts. Use it on any text that came from
    outside before it is logged or shown: an error description, an exception's message.

    :param text: the text to mask; anything else is converted with ``str()`` first.
    """
    text = str(text)
    text = _QUOTED_PAIR.sub(_hide_quoted_pair, text)
    text = _PARAMETER.sub(_hide_parameter, text)
    text = _BEARER.sub(rf"\1{HIDDEN}", text)
    return _FERNET.sub(HIDDEN, text)


class MaskingFormatter(logging.Formatter):
    """Format a record with another formatter, then mask the whole text.

    Masking the formatted text covers the message, its arguments, the traceback and the stack,
    whichever logger the record came from.

    :param inner: the formatter that lays the line out; a default ``logging.Formatter`` if None.
    """

    def __init__(self, inner=None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record):
        """Return the record as ``inner`` formats it, with tokens and secrets masked."""
        return mask(self.inner.format(record))


class MaskingFilter(logging.Filter):
    """Mask a record's message in place, so that every handler it reaches gets it masked.

    Unlike :class:`MaskingFormatter` it also covers handlers added later, but not tracebacks,
    and on a logger it sees only the records logged there, not those of its children.
    """

    def filter(self, record):
        """Replace the record's message with its masked text; always keep the record."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def install(*loggers):
    """Make every handler of ``loggers`` mask what it writes; installing again changes nothing.

    Only the handlers present now are changed: a handler added later writes unmasked lines
    unless it is given a :class:`MaskingFormatter` too.
    """
    for logger in loggers:
        for handler in logger.handlers:
            if not isinstance(handler.formatter, MaskingFormatter):
                handler.setFormatter(MaskingFormatter(handler.formatter))
