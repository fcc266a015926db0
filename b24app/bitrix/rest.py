"""The REST client: calls a portal's methods with its stored tokens, renewing them on expiry.

Each failure is a :mod:`~b24app.bitrix.errors` type. Tokens are renewed once for everyone: the
store locks the portal's row, re-reads the tokens and refreshes only if they are still the
refused ones. A portal that rate-limits or fails is retried a few times with jittered,
growing waits and then left alone until its backoff ends; one that no longer lets the app in is
marked with its access problem and left alone until the app is opened there again.
"""

import logging
import random
from datetime import timedelta

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from b24app import eventlog, store
from b24app.bitrix.errors import (
    AccessLost,
    AccessProblem,
    BitrixError,
    CallRejected,
    RefreshAndRetry,
    RetryLater,
    answer_json,
    error_for,
    retry_after,
    transport_error,
)
from b24app.models import utcnow

log = logging.getLogger(__name__)

USER_AGENT = "b24app/0.1 (+requests)"
# The longest wait between two attempts of one call, whatever a server asks for.
LONGEST_RETRY_WAIT = 30.0
# How a portal words its refusal to bind an event handler a second time (code ERROR_CORE).
ALREADY_BOUND = "handler already binded"


class RestClient:
    """Call REST methods of the portals in the store.

    :param oauth: the :class:`~b24app.bitrix.oauth.OAuthClient` that refreshes tokens.
    :param timeout: seconds to wait for a portal's answer.
    :param attempts: how many times a call is made when the portal asks to retry later.
    :param backoff: the first backoff, in seconds, of a portal whose call still failed; it
        doubles with each failure in a row, up to ``backoff_max``, and is jittered.
    """

    def __init__(self, oauth, timeout=10.0, attempts=3, backoff=2.0, backoff_max=300.0, http=None):
        self.oauth = oauth
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.http = http or requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        self._retry_wait = wait_random_exponential(multiplier=0.5, max=8)

    def call(self, member_id, method, params=None, attempts=None):
        """Call ``method`` on the portal with ``member_id``; return the whole answer.

        The answer is the portal's envelope: ``result``, ``time`` and, for lists, ``next``
        and ``total``. An expired access token is renewed once and the call repeated.

        :param attempts: overrides the client's number of attempts for this call.
        :raise BitrixError: when the call fails; see :mod:`~b24app.bitrix.errors`.
        """
        portal = store.get_portal(member_id)
        context = {"method": method, "member_id": member_id}
        if portal is None or not portal.access_token:
            raise CallRejected("NO_TOKENS", "No tokens are stored for the portal.", **context)
        if portal.access_problem:
            raise AccessLost(
                portal.access_problem,
                "Not called until the app is opened on the portal again.",
                problem=portal.access_problem,
                **context,
            )
        if portal.backoff_until and portal.backoff_until > utcnow():
            raise RetryLater(
                "BACKING_OFF",
                f"Not called until {portal.backoff_until:%H:%M:%S} UTC.",
                retry_after=(portal.backoff_until - utcnow()).total_seconds(),
                **context,
            )

        retrying = Retrying(
            retry=retry_if_exception_type(RetryLater),
            stop=stop_after_attempt(attempts or self.attempts),
            wait=self._wait,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            answer = retrying(self._call_renewing, portal, method, params)
        except (RetryLater, CallRejected) as exc:
            # A refresh rejected for our credentials or settings (the OAuth server's methods
            # are named oauth…) fails the same way every time: asking again on every tick
            # would only get the app blocked there.
            if isinstance(exc, RetryLater) or str(exc.method).startswith("oauth"):
                until = store.record_backoff(member_id, self._backoff_delay(exc))
                log.warning("Portal %s backs off until %s UTC: %s", member_id, f"{until:%X}", exc)
            raise
        if portal.backoff_failures:
            store.clear_backoff(member_id)
        return answer

    def call_with_token(self, client_endpoint, access_token, method, params=None):
        """Call ``method`` once with a token that is not stored (one a request presented).

        Nothing is refreshed, retried or stored; the caller must have proven
        ``client_endpoint``.

        :raise BitrixError: when the call fails for any reason.
        """
        return self._post(client_endpoint, access_token, method, params, member_id=None)

    def user_is_admin(self, client_endpoint, access_token):
        """Return whether the user ``access_token`` belongs to administers the portal.

        :raise BitrixError: when the portal cannot answer.
        """
        answer = self.call_with_token(client_endpoint, access_token, "user.admin")
        return answer["result"] is True

    def bind_event(self, member_id, event, handler):
        """Bind ``handler`` to the portal's ``event``; return False if it was bound already.

        :raise BitrixError: when the portal refuses the binding for another reason.
        """
        try:
            self.call(member_id, "event.bind", {"event": event, "handler": handler})
        except CallRejected as exc:
            if exc.code == "ERROR_CORE" and ALREADY_BOUND in exc.description.lower():
                return False
            raise
        return True

    def _call_renewing(self, portal, method, params):
        """Make one attempt of a call, renewing the tokens once if the portal asks for it."""
        member_id = portal.member_id
        try:
            return self._post_marking(portal, portal.access_token, method, params)
        except RefreshAndRetry as exc:
            refused = exc
        renewed = store.renew_tokens(member_id, portal.access_token, self._refresh_for(member_id))
        try:
            return self._post_marking(renewed, renewed.access_token, method, params)
        except RefreshAndRetry as exc:
            # Renewed tokens refused too: the portal no longer knows the app's tokens, or no
            # longer answers where the OAuth server says it is.
            moved = exc.code == "PORTAL_MOVED"
            lost = AccessLost(
                exc.code,
                f"Asked again after renewing the tokens ({refused.code}, then {exc.code}).",
                problem=AccessProblem.MOVED if moved else AccessProblem.NEEDS_REAUTH,
                status=exc.status,
                method=method,
                member_id=member_id,
            )
            store.mark_access_problem(member_id, lost, access_token=renewed.access_token)
            raise lost from None

    def _refresh_for(self, member_id):
        """Return the portal's refresh step for the store: the OAuth refresh, logged."""

        def refresh(refresh_token, server_endpoint):
            try:
                tokens = self.oauth.refresh(refresh_token, server_endpoint)
            except BitrixError as exc:
                eventlog.record_refresh(member_id, exc.code)
                raise
            eventlog.record_refresh(member_id)
            return tokens

        return refresh

    def _post_marking(self, portal, access_token, method, params):
        """Post with ``access_token``; record the access problem of a portal that shuts us out.

        The problem is recorded only while ``access_token`` is still the stored one, so a late
        failure never marks a portal whose tokens were renewed meanwhile.
        """
        try:
            return self._post(
                portal.client_endpoint, access_token, method, params, portal.member_id
            )
        except AccessLost as exc:
            store.mark_access_problem(portal.member_id, exc, access_token=access_token)
            raise

    def _post(self, client_endpoint, access_token, method, params, member_id):
        url = f"{client_endpoint}{method}"
        body = dict(params or {})
        body["auth"] = access_token
        context = {"method": method, "member_id": member_id}
        try:
            # A renamed portal answers 302; following it would turn the POST into a GET.
            response = self.http.post(url, json=body, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise transport_error(exc, "The portal", **context) from None
        if 300 <= response.status_code < 400:
            raise error_for(
                "PORTAL_MOVED",
                "The portal answered with a redirect to another address (renamed?).",
                status=response.status_code,
                **context,
            )
        answer = answer_json(response, "The portal", **context)
        if "error" in answer:
            raise error_for(
                str(answer["error"]),
                str(answer.get("error_description", "")),
                status=response.status_code,
                retry_after=retry_after(response),
                **context,
            )
        if response.status_code != 200 or "result" not in answer:
            raise error_for(
                "BAD_RESPONSE",
                f"The portal answered HTTP {response.status_code} without a result.",
                status=response.status_code,
                **context,
            )
        return answer

    def _wait(self, retry_state):
        """Return the jittered wait before the next attempt, longer if the portal asked so."""
        error = retry_state.outcome.exception()
        asked = getattr(error, "retry_after", None) or 0
        return min(max(self._retry_wait(retry_state), asked), LONGEST_RETRY_WAIT)

    def _log_retry(self, retry_state):
        error = retry_state.outcome.exception()
        log.info(
            "Portal %s: %s failed with %s, attempt %s; retrying in %.1f s",
            error.member_id,
            error.method,
            error.code,
            retry_state.attempt_number,
            retry_state.next_action.sleep,
        )

    def _backoff_delay(self, error):
        """Return a function giving a portal's backoff after ``failures`` failures in a row."""

        def delay(failures):
            growing = min(self.backoff * 2 ** min(failures - 1, 30), self.backoff_max)
            jittered = growing * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)
            asked = getattr(error, "retry_after", None) or 0
            return timedelta(seconds=max(jittered, min(asked, self.backoff_max)))

        return delay
