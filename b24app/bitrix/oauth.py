"""The Bitrix24 OAuth servers: proving a token is genuine (``app.info``) and refreshing tokens.

Bitrix24 runs an OAuth server per region, and each portal belongs to one of them. The app talks
only to the servers of its allow-list; a portal names its own with ``SERVER_ENDPOINT`` (frame),
``auth[server_endpoint]`` (events) or the ``server_endpoint`` of a token answer.
"""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import requests

from b24app.bitrix.errors import (
    AccessLost,
    AccessProblem,
    CallRejected,
    RefreshAndRetry,
    answer_json,
    error_for,
    retry_after,
    transport_error,
)

log = logging.getLogger(__name__)


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
    """Talk to the allowed OAuth servers on behalf of one registered app.

    :param servers: the allowed OAuth servers' base URLs, e.g. ``https://oauth.bitrix.info``;
        the first is asked when a portal does not name its own.
    :param client_id: the app's ``client_id``.
    :param client_secret: the app's ``client_secret``; sent to the OAuth servers only.
    """

    def __init__(self, servers, client_id, client_secret, timeout=10.0, http=None):
        self.servers = [server.rstrip("/") for server in servers]
        self.client_id = client_id
        self._client_secret = client_secret
        self.timeout = timeout
        self.http = http or requests.Session()

    def server_for(self, server_endpoint=None):
        """Return the base URL of the allowed OAuth server whose REST endpoint is given.

        :param server_endpoint: e.g. ``https://oauth.bitrix.info/rest/``; empty for the default.
        :raise CallRejected: ``OAUTH_SERVER_NOT_ALLOWED`` for a server outside the allow-list.
        """
        if not server_endpoint:
            return self.servers[0]
        base = server_endpoint.rstrip("/").removesuffix("/rest")
        if base in self.servers:
            return base
        raise CallRejected(
            "OAUTH_SERVER_NOT_ALLOWED",
            f"{server_endpoint[:200]!r} is not one of the allowed OAuth servers "
            "(B24_OAUTH_SERVERS).",
            method="oauth",
        )

    def server_endpoint(self, server_endpoint=None):
        """Return the REST endpoint of the allowed OAuth server named by ``server_endpoint``.

        :raise CallRejected: ``OAUTH_SERVER_NOT_ALLOWED`` for a server outside the allow-list.
        """
        return self.server_for(server_endpoint) + "/rest/"

    def app_info(self, access_token, server_endpoint=None):
        """Return what the portal's OAuth server knows about ``access_token``.

        :param server_endpoint: the portal's OAuth server (REST endpoint); empty for the default.
        :raise BitrixError: when the server rejects the token or gives no usable answer;
            ``CallRejected`` for a server outside the allow-list.
        """
        url = f"{self.server_for(server_endpoint)}/rest/app.info"
        body = self._get(url, {"auth": access_token}, "app.info")
        result = body.get("result")
        install = result.get("install") if isinstance(result, dict) else None
        if not isinstance(install, dict):
            raise CallRejected(
                "BAD_RESPONSE", "app.info answered without an install section.", method="app.info"
            )
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

    def refresh(self, refresh_token, server_endpoint=None):
        """Exchange ``refresh_token`` (single use) for a new token pair at the portal's server.

        :param server_endpoint: the portal's OAuth server (REST endpoint); empty for the default.
        :raise AccessLost: when the server will not renew the tokens (``invalid_grant``, app
            not installed, unpaid, portal deleted): only the app opened again helps.
        :raise RetryLater: when the server cannot be reached or is failing.
        :raise CallRejected: when our credentials or the server are wrong.
        """
        url = f"{self.server_for(server_endpoint)}/oauth/token/"
        params = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "refresh_token": refresh_token,
        }
        try:
            body = self._get(url, params, "oauth/token")
        except RefreshAndRetry as exc:
            # From the OAuth server, a refused token means the refresh token is no good.
            raise AccessLost(
                exc.code,
                exc.description,
                problem=AccessProblem.NEEDS_REAUTH,
                status=exc.status,
                method=exc.method,
            ) from None
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
            raise CallRejected(
                "BAD_RESPONSE", "The token answer lacks its tokens.", method="oauth/token"
            ) from None

    def _get(self, url, params, method):
        try:
            response = self.http.get(url, params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise transport_error(exc, "The OAuth server", method=method) from None
        body = answer_json(response, "The OAuth server", method=method)
        # Branch on the error code, not the status: the server sends some errors with 200.
        if body.get("error"):
            raise error_for(
                body["error"],
                body.get("error_description", ""),
                status=response.status_code,
                retry_after=retry_after(response),
                method=method,
            )
        if response.status_code != 200:
            raise error_for(
                "BAD_RESPONSE",
                f"The OAuth server answered HTTP {response.status_code}.",
                status=response.status_code,
                method=method,
            )
        return body


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
