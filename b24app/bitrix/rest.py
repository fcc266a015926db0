"""The REST client: calls a portal's methods with its stored tokens, refreshing them on expiry."""

import logging
import threading

import requests

from b24app import store
from b24app.bitrix.oauth import OAuthError

log = logging.getLogger(__name__)

USER_AGENT = "b24app/0.1 (+requests)"
# The portal's answers to an access token that has expired.
REFRESHABLE_ERRORS = {"expired_token", "invalid_token"}
# Its answers to a token it does not know, which is also what a token replaced by a refresh
# may get: worth repeating with the stored token if that has changed meanwhile.
AUTH_ERRORS = REFRESHABLE_ERRORS | {"NO_AUTH_FOUND"}


class RestError(Exception):
    """A REST call failed; ``code`` is the portal's error code or one of our own.

    Our own codes: ``NETWORK_ERROR`` (no answer), ``BAD_RESPONSE`` (no usable JSON),
    ``NO_TOKENS`` (nothing stored for the portal), ``REFRESH_FAILED`` (the OAuth server
    refused to renew the tokens), ``PORTAL_MOVED`` (the portal answered with a redirect).
    """

    def __init__(self, code, description, *, status=None, method=None, member_id=None):
        super().__init__(f"{method}: {code}: {description}")
        self.code = code
        self.description = description
        self.status = status
        self.method = method
        self.member_id = member_id


class RestClient:
    """Call REST methods of the portals in the store.

    :param oauth: the :class:`~b24app.bitrix.oauth.OAuthClient` that refreshes tokens.
    :param timeout: seconds to wait for a portal's answer.
    """

    def __init__(self, oauth, timeout=10.0, http=None):
        self.oauth = oauth
        self.timeout = timeout
        self.http = http or requests.Session()
        self.http.headers["User-Agent"] = USER_AGENT
        self._refresh_locks = {}
        self._locks_guard = threading.Lock()

    def call(self, member_id, method, params=None):
        """Call ``method`` on the portal with ``member_id``; return the whole answer.

        The answer is the portal's envelope: ``result``, ``time`` and, for lists, ``next``
        and ``total``. An expired access token is refreshed once and the call repeated.

        :raise RestError: when the call fails for any reason.
        """
        portal = store.get_portal(member_id)
        if portal is None or not portal.access_token:
            raise RestError(
                "NO_TOKENS", "No tokens are stored.", method=method, member_id=member_id
            )
        endpoint = portal.client_endpoint
        try:
            return self._post(endpoint, portal.access_token, method, params, member_id)
        except RestError as exc:
            if exc.code not in AUTH_ERRORS:
                raise
            access_token = self._renewed_token(member_id, portal.access_token, exc)
        return self._post(endpoint, access_token, method, params, member_id)

    def call_with_token(self, client_endpoint, access_token, method, params=None):
        """Call ``method`` once with a token that is not stored (one a request presented).

        Nothing is refreshed or stored; the caller must have proven ``client_endpoint``.

        :raise RestError: when the call fails for any reason.
        """
        return self._post(client_endpoint, access_token, method, params, member_id=None)

    def user_is_admin(self, client_endpoint, access_token):
        """Return whether the user ``access_token`` belongs to administers the portal.

        :raise RestError: when the portal cannot answer.
        """
        answer = self.call_with_token(client_endpoint, access_token, "user.admin")
        return answer["result"] is True

    def _post(self, client_endpoint, access_token, method, params, member_id):
        url = f"{client_endpoint}{method}"
        body = dict(params or {})
        body["auth"] = access_token
        context = {"method": method, "member_id": member_id}
        try:
            # A renamed portal answers 302; following it would turn the POST into a GET.
            response = self.http.post(url, json=body, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise RestError(
                "NETWORK_ERROR",
                f"The portal could not be reached ({type(exc).__name__}).",
                **context,
            ) from None
        if 300 <= response.status_code < 400:
            # Not handled yet: re-posting to the new domain and storing it.
            raise RestError(
                "PORTAL_MOVED",
                "The portal answered with a redirect.",
                status=response.status_code,
                **context,
            )
        try:
            answer = response.json()
        except ValueError:
            raise RestError(
                "BAD_RESPONSE",
                f"The portal answered HTTP {response.status_code} without JSON.",
                status=response.status_code,
                **context,
            ) from None
        if not isinstance(answer, dict):
            raise RestError("BAD_RESPONSE", "The answer is not an object.", **context)
        if "error" in answer:
            raise RestError(
                str(answer["error"]),
                str(answer.get("error_description", "")),
                status=response.status_code,
                **context,
            )
        if response.status_code != 200 or "result" not in answer:
            raise RestError(
                "BAD_RESPONSE",
                f"The portal answered HTTP {response.status_code} without a result.",
                status=response.status_code,
                **context,
            )
        return answer

    def _renewed_token(self, member_id, refused_access_token, refusal):
        """Return the access token to repeat a refused call with, refreshing at most once.

        :param refused_access_token: the token the portal refused.
        :param refusal: the portal's :class:`RestError`; raised again when no renewal helps.
        """
        method = refusal.method
        with self._lock_for(member_id):
            # Another thread may have refreshed while this one waited for the lock, and the
            # portal may then call the old token unknown rather than expired.
            portal = store.get_portal(member_id)
            if portal is None or not portal.refresh_token:
                raise RestError(
                    "NO_TOKENS", "No tokens are stored.", method=method, member_id=member_id
                )
            if portal.access_token != refused_access_token:
                return portal.access_token
            if refusal.code not in REFRESHABLE_ERRORS:
                raise refusal
            try:
                tokens = self.oauth.refresh(portal.refresh_token)
            except OAuthError as exc:
                log.warning("Token refresh failed for portal %s: %s", member_id, exc.code)
                raise RestError(
                    "REFRESH_FAILED",
                    f"The OAuth server refused to renew the tokens ({exc.code}).",
                    status=exc.status,
                    method=method,
                    member_id=member_id,
                ) from None
            store.save_tokens(member_id, tokens)
            log.info("Refreshed the tokens of portal %s", member_id)
            return tokens.access_token

    def _lock_for(self, member_id):
        with self._locks_guard:
            return self._refresh_locks.setdefault(member_id, threading.Lock())
