"""The frame handshake: what a portal POSTs into the app's iframe, and proof that it is genuine.

A portal opens the app by POSTing the viewing user's tokens into the iframe (the install path
on first install, the handler path on every later open), with ``DOMAIN``, ``PROTOCOL``,
``LANG`` and ``APP_SID`` in the query string. Anyone can POST those fields, so nothing in them
is trusted until the OAuth server confirms that the access token belongs to this app on that
very portal.
"""

import re
from dataclasses import dataclass, field

from b24app import safejson
from b24app.bitrix.errors import BitrixError, RetryLater

MEMBER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DOMAIN_PATTERN = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{1,512}$")
_PLACEMENT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class HandshakeError(Exception):
    """A frame handshake was refused; ``message`` is safe to show, ``status`` is the HTTP one."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class FrameRequest:
    """The fields of one frame POST, checked for form but not yet for authenticity."""

    domain: str
    protocol: int
    lang: str
    app_sid: str
    auth_id: str = field(repr=False)
    auth_expires: int
    refresh_id: str = field(repr=False)
    member_id: str
    status: str
    placement: str
    placement_options: dict
    server_endpoint: str
    application_token: str = field(repr=False)
    application_scope: str

    @property
    def portal_origin(self):
        """Return the portal's origin as a browser sees it, e.g. ``https://x.bitrix24.com``."""
        scheme = "https" if self.protocol == 1 else "http"
        host = self.domain
        for default_port in (":443", ":80"):
            if host.endswith(default_port):
                host = host[: -len(default_port)]
        return f"{scheme}://{host}"

    @property
    def client_endpoint(self):
        """Return the portal's REST endpoint as the frame fields imply it."""
        return f"{self.portal_origin}/rest/"


def parse_frame_request(query, form):
    """Return the :class:`FrameRequest` in a frame POST's query string and form.

    :raise HandshakeError: (400) naming the first missing or malformed field.
    """
    values = {}
    for name in ("DOMAIN", "AUTH_ID", "REFRESH_ID", "member_id"):
        value = (query.get(name) or form.get(name) or "").strip()
        if not value:
            raise HandshakeError(400, f"The frame request lacks {name}.")
        values[name] = value

    if not DOMAIN_PATTERN.match(values["DOMAIN"]):
        raise HandshakeError(400, "DOMAIN is not a host name.")
    if not MEMBER_ID_PATTERN.match(values["member_id"]):
        raise HandshakeError(400, "member_id is malformed.")
    for name in ("AUTH_ID", "REFRESH_ID"):
        if not TOKEN_PATTERN.match(values[name]):
            raise HandshakeError(400, f"{name} is malformed.")

    try:
        auth_expires = int(form.get("AUTH_EXPIRES", "3600"))
    except ValueError:
        raise HandshakeError(400, "AUTH_EXPIRES must be a number of seconds.") from None
    if not 0 < auth_expires <= 86400:
        raise HandshakeError(400, "AUTH_EXPIRES must be between 1 and 86400 seconds.")

    protocol = (query.get("PROTOCOL") or form.get("PROTOCOL") or "1").strip()
    if protocol not in ("0", "1"):
        raise HandshakeError(400, "PROTOCOL must be 0 or 1.")

    placement = (form.get("PLACEMENT") or "DEFAULT").strip()
    if not _PLACEMENT.match(placement):
        raise HandshakeError(400, "PLACEMENT is malformed.")

    application_token = (form.get("APPLICATION_TOKEN") or "").strip()
    if application_token and not TOKEN_PATTERN.match(application_token):
        raise HandshakeError(400, "APPLICATION_TOKEN is malformed.")

    return FrameRequest(
        domain=values["DOMAIN"].lower(),
        protocol=int(protocol),
        lang=(query.get("LANG") or "en").strip()[:8],
        app_sid=(query.get("APP_SID") or "").strip()[:64],
        auth_id=values["AUTH_ID"],
        auth_expires=auth_expires,
        refresh_id=values["REFRESH_ID"],
        member_id=values["member_id"],
        status=(form.get("status") or "").strip()[:8],
        placement=placement,
        placement_options=_placement_options(form.get("PLACEMENT_OPTIONS")),
        server_endpoint=(form.get("SERVER_ENDPOINT") or "").strip(),
        application_token=application_token,
        application_scope=(form.get("APPLICATION_SCOPE") or "").strip(),
    )


def _placement_options(raw):
    # Portals omit the field when empty and some placements send "undefined": both mean none.
    if not raw:
        return {}
    try:
        options = safejson.loads(raw)
    except ValueError:
        return {}
    return options if isinstance(options, dict) else {}


def verify_frame_request(frame, oauth):
    """Prove that the frame's access token belongs to this app on the portal it claims.

    :param frame: the parsed :class:`FrameRequest`.
    :param oauth: the :class:`~b24app.bitrix.oauth.OAuthClient`; the portal's own OAuth server
        (``SERVER_ENDPOINT``, when sent) is asked, if it is an allowed one.
    :return: the OAuth server's :class:`~b24app.bitrix.oauth.AppInfo` for the token.
    :raise HandshakeError: 403 when the token is rejected or belongs to another app or
        portal, 400 for an OAuth server outside the allow-list, 502 when the OAuth server
        cannot be asked.
    """
    try:
        info = oauth.app_info(frame.auth_id, frame.server_endpoint)
    except RetryLater:
        raise HandshakeError(
            502, "The OAuth server could not confirm the portal's token; try again."
        ) from None
    except BitrixError as exc:
        if exc.code == "OAUTH_SERVER_NOT_ALLOWED":
            raise HandshakeError(
                400, "SERVER_ENDPOINT is not one of the OAuth servers this app trusts."
            ) from None
        raise HandshakeError(
            403, f"The OAuth server rejected the portal's token ({exc.code})."
        ) from None

    if info.client_id != oauth.client_id:
        raise HandshakeError(403, "The portal's token was issued to another application.")
    if info.member_id != frame.member_id:
        raise HandshakeError(403, "The portal's token belongs to another portal (member_id).")
    if info.domain.lower() != frame.domain:
        raise HandshakeError(403, "DOMAIN is not the portal that the token belongs to.")
    return info
