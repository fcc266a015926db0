"""What a portal or the OAuth server said when a call failed, as a type that says what to do.

Bitrix24 answers a failed call with an error code (``{"error": ..., "error_description": ...}``),
and the same code comes with different HTTP statuses from different servers, so the type is
chosen by the code first and by the status only for codes it does not know:

- :class:`RefreshAndRetry`: renew the tokens (which also tells the portal's current address)
  and repeat the call.
- :class:`RetryLater`: the portal is rate-limiting or down; wait, then try again.
- :class:`AccessLost`: give up on this portal until the app is opened there again.
- :class:`CallRejected`: our call or our settings are wrong; repeating it cannot help.

Our own codes, for failures without a Bitrix24 answer: ``NETWORK_ERROR`` (no answer or a
dropped connection), ``TIMEOUT``, ``BAD_RESPONSE`` (no usable JSON: an HTML or empty body),
``NO_TOKENS`` (nothing stored for the portal), ``BACKING_OFF`` (the portal is in backoff, the
call was not made), ``PORTAL_MOVED`` (the portal answered with a redirect) and
``OAUTH_SERVER_NOT_ALLOWED`` (the portal's OAuth server is not in our allow-list).
"""

import requests

from b24app.logsafe import mask
from b24app.models import AccessProblem


class BitrixError(Exception):
    """A call to a portal or the OAuth server failed.

    :param code: the server's error code, or one of our own (see the module's docstring).
    :param description: the server's description, masked of anything that looks like a token.
    :param status: the HTTP status, when there was an answer.
    :param method: the REST method, or ``oauth/token`` / ``app.info`` for the OAuth server.
    :param member_id: the portal, when the call was made for a stored one.
    """

    def __init__(self, code, description, *, status=None, method=None, member_id=None):
        self.code = str(code)
        self.description = mask(str(description))
        self.status = status
        self.method = method
        self.member_id = member_id
        super().__init__(str(self))

    def __str__(self):
        where = f"portal {self.member_id}: " if self.member_id else ""
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{where}{self.method}: {self.code}{status}: {self.description}"


class RefreshAndRetry(BitrixError):
    """Renew the tokens and repeat the call: the access token is expired or unknown, or the
    portal answered from its old address (a token answer names the current one)."""


class RetryLater(BitrixError):
    """The server is rate-limiting or unavailable: wait, then try again.

    ``retry_after`` is the wait in seconds the server asked for, when it said.
    """

    def __init__(self, *args, retry_after=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class AccessLost(BitrixError):
    """The portal no longer lets the app in: stop calling it until the app is opened again.

    ``problem`` is the :class:`AccessProblem` to record for the portal.
    """

    def __init__(self, *args, problem, **kwargs):
        super().__init__(*args, **kwargs)
        self.problem = problem


class CallRejected(BitrixError):
    """The call or the app's settings are wrong (unknown method, bad parameters, scope, client)."""


REFRESH_AND_RETRY_CODES = {"expired_token", "invalid_token", "NO_AUTH_FOUND", "PORTAL_MOVED"}
RETRY_LATER_CODES = {
    "QUERY_LIMIT_EXCEEDED",
    "OPERATION_TIME_LIMIT",
    "OVERLOAD_LIMIT",
    "INTERNAL_SERVER_ERROR",
    "ERROR_UNEXPECTED_ANSWER",
    "server_error",
    "temporarily_unavailable",
    "NETWORK_ERROR",
    "TIMEOUT",
}
# A method over its operation time limit stays blocked until the time it used over the last
# ten minutes drops below the limit; like the official SDK, wait at least this long for it.
OPERATION_TIME_LIMIT_WAIT = 10.0
ACCESS_PROBLEMS = {
    "invalid_grant": AccessProblem.NEEDS_REAUTH,
    # The user whose tokens the app holds was dismissed or deactivated.
    "authorization_error": AccessProblem.NEEDS_REAUTH,
    "PAYMENT_REQUIRED": AccessProblem.PAYMENT_REQUIRED,
    "PORTAL_DELETED": AccessProblem.PORTAL_DELETED,
    "NOT_INSTALLED": AccessProblem.NOT_INSTALLED,
    "APPLICATION_NOT_FOUND": AccessProblem.NOT_INSTALLED,
    "ERROR_OAUTH": AccessProblem.NOT_INSTALLED,
}


def error_for(code, description, *, status=None, retry_after=None, **context):
    """Return the :class:`BitrixError` subclass instance that ``code`` (and ``status``) calls for.

    :param context: ``method`` and ``member_id``, passed on to the error.
    """
    arguments = (code, description)
    context["status"] = status
    if code in REFRESH_AND_RETRY_CODES:
        return RefreshAndRetry(*arguments, **context)
    if code in ACCESS_PROBLEMS:
        return AccessLost(*arguments, problem=ACCESS_PROBLEMS[code], **context)
    if code == "OPERATION_TIME_LIMIT" or status == 429:
        retry_after = max(retry_after or 0, OPERATION_TIME_LIMIT_WAIT)
    if code in RETRY_LATER_CODES or status == 429 or (status or 0) >= 500:
        return RetryLater(*arguments, retry_after=retry_after, **context)
    return CallRejected(*arguments, **context)


def transport_error(exc, server, **context):
    """Return the :class:`RetryLater` for a request that got no answer from ``server``.

    :param exc: the ``requests`` exception; only its type is reported, since its text can
        hold the request's URL and with it a secret.
    :param server: who was asked, for the description ("The portal").
    """
    code = "TIMEOUT" if isinstance(exc, requests.Timeout) else "NETWORK_ERROR"
    return RetryLater(code, f"{server} could not be reached ({type(exc).__name__}).", **context)


def answer_json(response, server, **context):
    """Return the JSON object ``server`` answered with.

    :raise BitrixError: ``BAD_RESPONSE`` for an HTML, empty or non-object body; a retry-later
        error when the status was a server failure.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        kind = "an empty answer" if not response.content else "an answer that is not JSON"
        raise error_for(
            "BAD_RESPONSE",
            f"{server} gave {kind} (HTTP {response.status_code}).",
            status=response.status_code,
            retry_after=retry_after(response),
            **context,
        )
    return body


def retry_after(response):
    """Return the seconds a ``Retry-After`` header asks to wait, or None."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds < 24 * 3600 else None
