"""The Bitrix24 OAuth server: proving a token is genuine (``app.info``) and refreshing tokens."""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import requests

log = logging.getLogger(__name__)


class OAuthError(Exception):
    """The OAuth server refused a request or could not be reached.

    ``code`` is the server's error code (``invalid_grant``, ``expired_token``, …), or
    ``network_error`` / ``bad_response`` when no usable answer came back.
    """

    def __init__(self, code, description, status=None):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.status = status


@dataclass(frozen=True)
class AppInfo:
    """What the OAuth server says about an access token: whose app, which portal, which user."""

    client_id: str
    member_id: str
    domain: str
    client_endpoint: str
    installed: bool
    status: str
    scope: str
    user_id: int | None


@dataclass(frozen=True)
class TokenSet:
    """A fresh pair of tokens and what comes with them from a refresh."""

    access_token: str
    refresh_token: str
    expires_at: datetime
    member_id: str
    client_endpoint: str
    server_endpoint: str
    scope: str
    status: str
    user_id: int | None


class OAuthClient:
    """Talk to one OAuth server on behalf of one registered app.

    :param server_url: the OAuth server's base URL, e.g. ``https://oauth.bitrix.info``.
    :param client_id: the app's ``client_id``.
    :param client_secret: the app's ``client_secret``; sent to the OAuth server only.
    """

    def __init__(self, server_url, client_id, client_secret, timeout=10.0, http=None):
        self.server_url = server_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.timeout = timeout
        self.http = http or requests.Session()

    def app_info(self, access_token):
        """Return what the OAuth server knows about ``access_token``.

        :raise OAuthError: when the server rejects the token or gives no usable answer.
        """
        body = self._get(f"{self.server_url}/rest/app.info", {"auth": access_token})
        result = body.get("result")
        install = result.get("install") if isinstance(result, dict) else None
        if not isinstance(install, dict):
            raise OAuthError("bad_response", "app.info answered without an install section.")
        return AppInfo(
            client_id=str(result.get("client_id", "")),
            member_id=str(install.get("member_id", "")),
            domain=str(install.get("domain", "")),
            client_endpoint=str(install.get("client_endpoint", "")),
            installed=bool(install.get("installed")),
            status=str(install.get("status", "")),
            scope=str(result.get("scope", install.get("scope", ""))),
            user_id=_int_or_none(result.get("user_id")),
        )

    def refresh(self, refresh_token):
        """Exchange ``refresh_token`` (single use) for a new token pair.

        :raise OAuthError: ``invalid_grant`` when the refresh token is used or unknown, and
            the server's other codes as they come.
        """
        body = self._get(
            f"{self.server_url}/oauth/token/",
            {
                "grant_type": "refresh_token",
                "client_id": self.client_id,
                "client_secret": self._client_secret,
                "refresh_token": refresh_token,
            },
        )
        try:
            expires_in = int(body["expires_in"])
            return TokenSet(
                access_token=str(body["access_token"]),
                refresh_token=str(body["refresh_token"]),
                expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
                member_id=str(body.get("member_id", "")),
                client_endpoint=str(body.get("client_endpoint", "")),
                server_endpoint=str(body.get("server_endpoint", "")),
                scope=str(body.get("scope", "")),
                status=str(body.get("status", "")),
                user_id=_int_or_none(body.get("user_id")),
            )
        except (KeyError, TypeError, ValueError):
            raise OAuthError("bad_response", "The token answer lacks its tokens.") from None

    def _get(self, url, params):
        try:
            response = self.http.get(url, params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise OAuthError(
                "network_error", f"The OAuth server could not be reached ({type(exc).__name__})."
            ) from None
        try:
            body = response.json()
        except ValueError:
            raise OAuthError(
                "bad_response",
                f"The OAuth server answered HTTP {response.status_code} without JSON.",
                response.status_code,
            ) from None
        if not isinstance(body, dict):
            raise OAuthError("bad_response", "The OAuth server answered with a non-object.")
        # Branch on the error code, not the status: the server sends some errors with 200.
        if body.get("error"):
            raise OAuthError(
                str(body["error"]),
                str(body.get("error_description", "")),
                response.status_code,
            )
        if response.status_code != 200:
            raise OAuthError(
                "bad_response",
                f"The OAuth server answered HTTP {response.status_code}.",
                response.status_code,
            )
        return body


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
