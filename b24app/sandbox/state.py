"""The sandbox's memory: portals, users, OAuth tokens, push channels, and what happened.

Everything lives in one :class:`SandboxState` guarded by one lock, because the portal pages,
the REST API, the OAuth server and every push socket run in threads of their own. Tests arrange
and inspect a scenario through the same methods the portal pages use.

What a real portal would remember across a restart (portals, users, handlers, OAuth tokens, push
channel ids, id counters) is also written to a JSON file after every change and read back when
the state is created, so the app's stored tokens keep working after the dev server restarts.
"""

import json
import logging
import os
import queue
import secrets
import tempfile
import threading
import time
import typing
import uuid
from collections import deque
from contextlib import contextmanager, suppress
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from b24app.sandbox import events
from b24app.sandbox.faults import (
    DELAYED_KINDS,
    KINDS,
    MAX_DELAY,
    OAUTH_METHODS,
    TARGETS,
    Fault,
    method_name,
)

log = logging.getLogger(__name__)

APP_NAME = "Ping app"
APP_STATUS = "L"
APP_SCOPE = "pull"
APP_VERSION = 1
LANGUAGE_ID = "en"

# Push channels live 12 hours and a pull config 24 hours, as on a cloud portal.
CHANNEL_LIFETIME = 12 * 3600
PULL_CONFIG_LIFETIME = 24 * 3600
# The push server accepts messages up to this size and silently drops larger ones.
PUSH_PAYLOAD_LIMIT = 1024 * 1024

SHARED_CHANNEL = 0
# How many of the newest push and event records the sandbox keeps for tests to inspect.
RECORDS_KEPT = 100_000

# The layout of the state file; a file with another version is set aside like a corrupt one.
# Fields added later have defaults, and files written before them load with those defaults.
STATE_FILE_VERSION = 1

# What can be wrong with a whole portal, and the fault kind each makes every REST call and
# every refresh answer with.
PORTAL_CONDITIONS = {
    "unpaid": "PAYMENT_REQUIRED",
    "deleted": "PORTAL_DELETED",
}


class ProtocolError(Exception):
    """A request the portal refuses, answered as ``{"error", "error_description"}``."""

    def __init__(self, status, error, description):
        super().__init__(f"{error}: {description}")
        self.status = status
        self.error = error
        self.description = description

    def as_json(self):
        """Return the protocol's error envelope."""
        return {"error": self.error, "error_description": self.description}


class SandboxError(ValueError):
    """The sandbox was asked for something a portal would not do (unknown portal, non-admin)."""


def iso_time(timestamp):
    """Return a unix time as ISO 8601 in UTC with an explicit offset, as portals write dates."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@dataclass
class User:
    """A portal user; user 1 is the administrator."""

    id: int
    name: str
    last_name: str
    gender: str
    admin: bool


@dataclass
class Channel:
    """A push channel: one shared per portal, one private per portal user."""

    id: str
    member_id: str
    type: str
    user_id: int
    start: float
    end: float
    public_id: str = ""

    def describe(self):
        """Return the channel as ``pull.application.config.get`` lists it."""
        described = {"id": self.id, "start": iso_time(self.start), "end": iso_time(self.end)}
        if self.public_id:
            described["public_id"] = self.public_id
        described["type"] = self.type
        return described


@dataclass
class EventHandler:
    """A handler URL bound with ``event.bind``."""

    id: int
    event: str
    handler: str
    auth_type: int
    user_id: int


@dataclass
class Portal:
    """A sandbox portal with the registered local app on it.

    ``installed`` is the app's INSTALLED flag; ``application_token`` belongs to the current
    installation and is replaced when the app is uninstalled. ``api_only`` marks an app
    installed as one that uses the API only, which the portal opens no frame for. ``condition``
    is None for a portal in order, or one of :data:`PORTAL_CONDITIONS`.
    """

    member_id: str
    app_id: int
    created_at: float
    application_token: str
    users: dict
    installed: bool = False
    uninstalled: bool = False
    install_count: int = 0
    handlers: list = field(default_factory=list)
    condition: str | None = None
    api_only: bool = False

    @property
    def app_state(self):
        """Return ``installed``, ``api_only``, ``not_installed`` or ``uninstalled``."""
        if self.installed:
            return "api_only" if self.api_only else "installed"
        return "uninstalled" if self.uninstalled else "not_installed"


@dataclass
class Token:
    """One link of an OAuth chain: an access token and the refresh token issued with it."""

    access_token: str
    refresh_token: str
    member_id: str
    user_id: int
    access_expires: float
    refresh_expires: float
    # Set when a refresh used this link up, or when the app was uninstalled.
    revoked: bool = False
    uninstalled: bool = False

    @property
    def expires_in(self):
        """Return the access token's lifetime in whole seconds from now (at least 0)."""
        return max(0, int(self.access_expires - time.time()))


@dataclass
class FrameLaunch:
    """What a portal page does to open the app in its frame: a form POST into a named iframe.

    ``url`` already carries ``DOMAIN``, ``PROTOCOL``, ``LANG`` and ``APP_SID``; ``form`` is the
    POST body; ``iframe_name`` is ``DOMAIN|PROTOCOL|APP_SID``; ``init_data`` is the reply the
    parent gives to the frame's ``getInitData``.
    """

    member_id: str
    user_id: int
    app_sid: str
    install: bool
    url: str
    form: dict
    iframe_name: str
    init_data: dict
    app_origin: str

    def as_json(self):
        """Return the launch for the portal page's script."""
        return {
            "member_id": self.member_id,
            "user_id": self.user_id,
            "app_sid": self.app_sid,
            "install": self.install,
            "url": self.url,
            "form": self.form,
            "iframe_name": self.iframe_name,
            "init_data": self.init_data,
            "app_origin": self.app_origin,
        }


@dataclass
class PushedMessage:
    """A record of one message the push server sent on one channel."""

    member_id: str
    channel: str
    channel_type: str
    user_id: int
    module_id: str
    command: str
    params: object
    mid: str
    delivered_to: int


@dataclass
class EventDelivery:
    """A record of one event POSTed to a bound handler (``status`` or ``error`` is set)."""

    member_id: str
    event: str
    handler: str
    event_handler_id: int
    payload: dict
    status: int | None = None
    error: str | None = None
    # The kind of the ``events`` fault the delivery was made with, if any.
    fault: str | None = None

    @property
    def url(self):
        """Return the handler URL the event was posted to."""
        return self.handler


class Subscriber:
    """A push socket's subscription: the channels it listens on and its outgoing queue."""

    def __init__(self, member_id, channel_ids):
        self.member_id = member_id
        self.channel_ids = tuple(channel_ids)
        self.outbox = queue.Queue()


class SandboxState:
    """All sandbox portals and everything the tests may arrange or inspect.

    Records for tests, the newest ``RECORDS_KEPT`` of each: ``pushed_messages`` (a deque of
    :class:`PushedMessage`), ``event_deliveries`` (a deque of :class:`EventDelivery`),
    ``refresh_count`` (completed OAuth refreshes, all portals), ``refresh_counts`` (by
    ``member_id``) and ``refresh_requests`` (requests that reached the token endpoint with a
    portal's refresh token, by ``member_id``, whether they succeeded, failed or met a fault).
    These records, frame launches, faults, the rate limit's buckets and push sockets live in
    memory only.

    Faults (:meth:`add_fault`) make a portal's next requests fail as a real server fails;
    a portal's condition (:meth:`set_portal_condition`) makes all of them fail until changed.
    The REST API limits each portal's requests as a cloud portal does: a leaky bucket of
    ``config["SANDBOX_RATE_LIMIT"]`` requests that drains ``config["SANDBOX_RATE_DRAIN"]`` per
    second; either set to 0 turns the limit off.

    Portals, users, handlers, tokens, push channels and id counters are kept in the JSON file
    ``config["SANDBOX_STATE_FILE"]``: read here, rewritten atomically after every change. When
    the setting is missing, None or empty, the state lives in memory only. A file that cannot be
    read is renamed to ``<file>.corrupt-<timestamp>`` with a warning and the sandbox starts empty.
    """

    def __init__(self, config):
        """Read the sandbox's settings from the app's ``config`` and load its state file."""
        self.sandbox_url = config["SANDBOX_URL"].rstrip("/")
        self.public_url = config["PUBLIC_URL"].rstrip("/")
        self.client_id = config["B24_CLIENT_ID"]
        self.client_secret = config["B24_CLIENT_SECRET"]
        self.access_lifetime = float(config.get("SANDBOX_ACCESS_TOKEN_LIFETIME", 3600))
        self.refresh_lifetime = float(config.get("SANDBOX_REFRESH_TOKEN_LIFETIME", 180 * 86400))
        self.rate_limit = int(config.get("SANDBOX_RATE_LIMIT", 50))
        self.rate_drain = float(config.get("SANDBOX_RATE_DRAIN", 2.0))

        parts = urlsplit(self.sandbox_url)
        self.https = parts.scheme == "https"
        self.domain = parts.netloc
        self.client_endpoint = self.sandbox_url + "/rest/"
        self.oauth_url = self.sandbox_url + "/oauth-server"
        self.server_endpoint = self.oauth_url + "/rest/"
        self.handler_url = self.public_url + "/app"
        self.install_url = self.public_url + "/install"
        app_parts = urlsplit(self.handler_url)
        self.app_origin = f"{app_parts.scheme}://{app_parts.netloc}"
        self.started_at = int(time.time())

        self._lock = threading.RLock()
        self._delivered = threading.Condition(self._lock)
        self._portals = {}
        self._next_app_id = 1
        self._next_handler_id = 1
        self._by_access = {}
        # Every access token ever issued, used up or not, names its portal: a portal that
        # refuses or counts a request does so whatever the token's state.
        self._member_by_access = {}
        self._by_refresh = {}
        self._launches = {}
        self._channels = {}
        self._shared_channels = {}
        self._private_channels = {}
        self._subscribers = set()
        # Bounded, so that a dev server left running for days does not grow without end.
        self.pushed_messages = deque(maxlen=RECORDS_KEPT)
        self.event_deliveries = deque(maxlen=RECORDS_KEPT)
        self.refresh_counts = {}
        self.refresh_requests = {}
        self._faults = []
        self._next_fault_id = 1
        # member_id -> (requests in the bucket, when it was last drained)
        self._buckets = {}

        self.state_file = config.get("SANDBOX_STATE_FILE") or None
        self._change_depth = 0
        self._save_failing = False
        if self.state_file:
            self._load()

    # Portals and users.

    def create_portal(self):
        """Create a portal with users 1 (admin) and 2 and the app registered, not installed.

        :return: the new :class:`Portal`; its ``member_id`` is 32 hex digits.
        """
        users = {
            1: User(1, "Anna", "Admin", "F", True),
            2: User(2, "Nick", "User", "M", False),
        }
        with self._changing():
            portal = Portal(
                member_id=secrets.token_hex(16),
                app_id=self._next_app_id,
                created_at=time.time(),
                application_token=secrets.token_hex(16),
                users=users,
            )
            self._next_app_id += 1
            self._portals[portal.member_id] = portal
        return portal

    @property
    def portals(self):
        """Return all portals, oldest first."""
        with self._lock:
            return sorted(self._portals.values(), key=lambda portal: portal.created_at)

    def get_portal(self, member_id):
        """Return the portal with ``member_id``.

        :raise SandboxError: when there is no such portal.
        """
        with self._lock:
            portal = self._portals.get(member_id)
        if portal is None:
            raise SandboxError(f"No sandbox portal has member_id {member_id!r}.")
        return portal

    def get_user(self, member_id, user_id):
        """Return user ``user_id`` of the portal.

        :raise SandboxError: when the portal or the user does not exist.
        """
        portal = self.get_portal(member_id)
        try:
            user = portal.users.get(int(user_id))
        except (TypeError, ValueError):
            user = None
        if user is None:
            raise SandboxError(f"Portal {member_id} has no user {user_id!r}.")
        return user

    # OAuth tokens.

    def issue_tokens(self, member_id, user_id):
        """Start a new OAuth chain for a user and return its first :class:`Token`."""
        self.get_user(member_id, user_id)
        now = time.time()
        token = Token(
            access_token=secrets.token_hex(35),
            refresh_token=secrets.token_hex(35),
            member_id=member_id,
            user_id=int(user_id),
            access_expires=now + self.access_lifetime,
            refresh_expires=now + self.refresh_lifetime,
        )
        with self._changing():
            self._by_access[token.access_token] = token
            self._member_by_access[token.access_token] = member_id
            self._by_refresh[token.refresh_token] = token
        return token

    def refresh(self, client_id, client_secret, refresh_token):
        """Use up ``refresh_token`` and return the next :class:`Token` of its chain.

        The used refresh token and the access token issued with it stop working; other chains
        are untouched.

        :raise ProtocolError: ``invalid_client``, ``invalid_grant`` or ``NOT_INSTALLED``.
        """
        if not (
            secrets.compare_digest(str(client_id), self.client_id)
            and secrets.compare_digest(str(client_secret), self.client_secret or "")
        ):
            raise ProtocolError(401, "invalid_client", "Invalid client credentials")
        with self._changing():
            old = self._by_refresh.get(refresh_token)
            if old is not None and old.uninstalled:
                raise ProtocolError(401, "NOT_INSTALLED", "Application not installed")
            if old is None or old.revoked or old.refresh_expires <= time.time():
                raise ProtocolError(400, "invalid_grant", "Invalid grant")
            old.revoked = True
            self._by_access.pop(old.access_token, None)
            new = self.issue_tokens(old.member_id, old.user_id)
            self.refresh_counts[old.member_id] = self.refresh_counts.get(old.member_id, 0) + 1
        return new

    @property
    def refresh_count(self):
        """Return how many OAuth refreshes completed, over all portals."""
        with self._lock:
            return sum(self.refresh_counts.values())

    def find_token(self, access_token):
        """Return the live or expired :class:`Token` for ``access_token``, or None if unknown."""
        if not isinstance(access_token, str) or not access_token:
            return None
        with self._lock:
            token = self._by_access.get(access_token)
        if token is None or token.revoked or token.uninstalled:
            return None
        return token

    def expire_access_tokens(self, member_id):
        """Make every access token issued on the portal expired (refresh tokens stay valid)."""
        self.get_portal(member_id)
        past = time.time() - 1
        with self._changing():
            for token in self._by_access.values():
                if token.member_id == member_id:
                    token.access_expires = past

    def token_response(self, token):
        """Return the OAuth server's JSON for a freshly issued ``token``."""
        return {
            "access_token": token.access_token,
            "client_endpoint": self.client_endpoint,
            "domain": urlsplit(self.oauth_url).netloc,
            "expires": int(token.access_expires),
            "expires_in": int(self.access_lifetime),
            "member_id": token.member_id,
            "refresh_token": token.refresh_token,
            "scope": APP_SCOPE,
            "server_endpoint": self.server_endpoint,
            "status": APP_STATUS,
            "user_id": token.user_id,
        }

    # Faults, portal conditions and the rate limit.

    def add_fault(self, member_id, target, kind, times=1, method=None, delay=None):
        """Make the portal's next requests to ``target`` fail as ``kind``; return the fault.

        A request gets the oldest of the portal's faults that matches it, and a fault whose
        ``times`` are used up is gone; so faults added one after another answer one after
        another. The kinds and their answers are listed in :mod:`b24app.sandbox.faults`.

        :param target: ``"oauth"``, the OAuth server's token endpoint (or its ``app.info``
            with ``method="app.info"``), ``"rest"``, the portal's REST API, or ``"events"``,
            the portal's delivery of events to the app's handlers.
        :param kind: an error code of the target (``invalid_grant``, ``QUERY_LIMIT_EXCEEDED``,
            …), ``html_error``, ``empty_error``, ``slow``, ``drop_connection``, for ``rest``
            also ``redirect``; for ``events`` one of ``duplicate``, ``late``, ``wrong_token``
            and ``lost``.
        :param times: how many requests (or events) it answers; None until
            :meth:`clear_faults`.
        :param method: for ``rest``, only calls of this method (None: every call); for
            ``events``, only this event.
        :param delay: seconds to wait before answering; required for ``slow`` and ``late``.
        :return: a copy of the :class:`~b24app.sandbox.faults.Fault`.
        :raise SandboxError: for an unknown portal, or a target, kind or value that is not one.
        """
        self.get_portal(member_id)
        if target not in TARGETS:
            raise SandboxError(f"target must be one of {', '.join(TARGETS)}; got {target!r}.")
        if kind not in KINDS[target]:
            raise SandboxError(
                f"kind {kind!r} is not a fault of {target}; it may be one of "
                f"{', '.join(KINDS[target])}."
            )
        if times is not None and (type(times) is not int or times < 1):
            raise SandboxError(f"times must be a positive integer or null; got {times!r}.")
        if method is not None:
            if not isinstance(method, str) or not method_name(method.strip(), target):
                raise SandboxError(f"method must be a method name or null; got {method!r}.")
            method = method_name(method.strip(), target)
            if target == "oauth" and method not in OAUTH_METHODS:
                raise SandboxError(
                    "method of an oauth fault must be null (the token endpoint) or "
                    f"{', '.join(OAUTH_METHODS)}; got {method!r}."
                )
        if delay is not None:
            if type(delay) not in (int, float) or not 0 <= delay <= MAX_DELAY:
                raise SandboxError(
                    f"delay must be a number of seconds from 0 to {MAX_DELAY}; got {delay!r}."
                )
            delay = float(delay)
        if kind in DELAYED_KINDS and not delay:
            raise SandboxError(f"A {kind} fault needs a delay of more than 0 seconds.")

        with self._lock:
            fault = Fault(self._next_fault_id, member_id, target, kind, times, method, delay)
            self._next_fault_id += 1
            self._faults.append(fault)
            return replace(fault)

    def faults(self, member_id):
        """Return copies of the portal's faults still to answer, oldest first.

        :raise SandboxError: for an unknown portal.
        """
        self.get_portal(member_id)
        with self._lock:
            return [replace(fault) for fault in self._faults if fault.member_id == member_id]

    def clear_faults(self, member_id=None):
        """Remove the portal's faults, or every portal's with None; return how many went."""
        with self._lock:
            kept = [f for f in self._faults if member_id is not None and f.member_id != member_id]
            removed = len(self._faults) - len(kept)
            self._faults = kept
        return removed

    def take_fault(self, member_id, target, method=None):
        """Use up one answer of the oldest fault matching a request, and return a copy of it.

        :param method: the REST method called, or for ``oauth`` None (the token endpoint) or
            ``app.info``.
        :return: the :class:`~b24app.sandbox.faults.Fault`, or None when none matches.
        """
        with self._lock:
            for fault in self._faults:
                if fault.member_id == member_id and fault.matches(target, method):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return replace(fault)
        return None

    def set_portal_condition(self, member_id, condition):
        """Make the portal ``"unpaid"`` or ``"deleted"`` until changed, or in order with None.

        An unpaid portal answers every REST call and refresh with ``PAYMENT_REQUIRED``, a
        deleted one with ``PORTAL_DELETED``. The condition is kept in the state file.

        :raise SandboxError: for an unknown portal or condition.
        """
        portal = self.get_portal(member_id)
        if condition is not None and condition not in PORTAL_CONDITIONS:
            raise SandboxError(
                f"condition must be one of {', '.join(PORTAL_CONDITIONS)} or null; "
                f"got {condition!r}."
            )
        with self._changing():
            portal.condition = condition
        return portal

    def condition_fault(self, member_id, target):
        """Return the fault the portal's condition answers ``target`` with, or None."""
        with self._lock:
            portal = self._portals.get(member_id)
            condition = portal.condition if portal is not None else None
        if condition is None:
            return None
        return Fault(0, member_id, target, PORTAL_CONDITIONS[condition], times=None)

    def admit_rest_request(self, member_id):
        """Count one REST request in the portal's bucket; return False when the bucket is full.

        The bucket drains ``rate_drain`` requests a second; a refused request is not counted.
        """
        if self.rate_limit <= 0 or self.rate_drain <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            level, drained_at = self._buckets.get(member_id, (0.0, now))
            level = max(0.0, level - (now - drained_at) * self.rate_drain)
            if level + 1 > self.rate_limit:
                self._buckets[member_id] = (level, now)
                return False
            self._buckets[member_id] = (level + 1, now)
        return True

    def member_of_access_token(self, access_token):
        """Return the ``member_id`` an access token was issued on, live or not, or None."""
        if not isinstance(access_token, str):
            return None
        with self._lock:
            return self._member_by_access.get(access_token)

    def count_refresh_request(self, refresh_token):
        """Record a request to the token endpoint and return its portal's ``member_id``.

        :return: None for a refresh token the OAuth server never issued (nothing is recorded).
        """
        if not isinstance(refresh_token, str):
            return None
        with self._lock:
            token = self._by_refresh.get(refresh_token)
            if token is None:
                return None
            member_id = token.member_id
            self.refresh_requests[member_id] = self.refresh_requests.get(member_id, 0) + 1
        return member_id

    # The frame and the app's lifecycle.

    def frame_launch(
        self, member_id, user_id=1, placement="DEFAULT", placement_options=None, install=None
    ):
        """Issue fresh tokens for the user and return the :class:`FrameLaunch` to perform.

        :param install: True for the initial installation path, False for the handler path,
            None to pick the installation path while the app is not installed.
        :raise SandboxError: for an unknown portal or user, a non-admin opening an app that is
            not installed, or placement options that are not a JSON object.
        """
        portal = self.get_portal(member_id)
        user = self.get_user(member_id, user_id)
        if install is None:
            install = not portal.installed
        if not portal.installed and not user.admin:
            raise SandboxError(
                "The application is not fully installed yet; an administrator must finish it."
            )
        if install and not user.admin:
            raise SandboxError("Only an administrator can install the application.")
        options = placement_options or {}
        if isinstance(options, str):
            try:
                options = json.loads(options)
            except ValueError:
                raise SandboxError("PLACEMENT_OPTIONS must be a JSON object.") from None
        if not isinstance(options, dict):
            raise SandboxError("PLACEMENT_OPTIONS must be a JSON object.")
        placement = str(placement or "DEFAULT").upper()

        token = self.issue_tokens(member_id, user.id)
        app_sid = secrets.token_hex(16)
        protocol = 1 if self.https else 0
        target = self.install_url if install else self.handler_url
        query = urlencode(
            {"DOMAIN": self.domain, "PROTOCOL": protocol, "LANG": LANGUAGE_ID, "APP_SID": app_sid}
        )
        form = {
            "AUTH_ID": token.access_token,
            "AUTH_EXPIRES": str(int(self.access_lifetime)),
            "REFRESH_ID": token.refresh_token,
            "SERVER_ENDPOINT": self.server_endpoint,
            "APPLICATION_TOKEN": portal.application_token,
            "APPLICATION_SCOPE": APP_SCOPE,
            "member_id": member_id,
            "status": APP_STATUS,
            "PLACEMENT": placement,
        }
        if options:
            form["PLACEMENT_OPTIONS"] = json.dumps(options)
        init_data = {
            "DOMAIN": self.domain,
            "PROTOCOL": protocol,
            "PATH": urlsplit(target).path,
            "LANG": LANGUAGE_ID,
            "AUTH_ID": token.access_token,
            "AUTH_EXPIRES": str(int(self.access_lifetime)),
            "REFRESH_ID": token.refresh_token,
            "MEMBER_ID": member_id,
            # Not verified against a live portal: the first run is taken to be the install run.
            "FIRST_RUN": bool(install),
            "IS_ADMIN": user.admin,
            "INSTALL": bool(install),
            "USER_OPTIONS": {},
            "APP_OPTIONS": {},
            "PLACEMENT": placement,
            "PLACEMENT_OPTIONS": options,
        }
        launch = FrameLaunch(
            member_id=member_id,
            user_id=user.id,
            app_sid=app_sid,
            install=bool(install),
            url=f"{target}{'&' if '?' in target else '?'}{query}",
            form=form,
            iframe_name=f"{self.domain}|{protocol}|{app_sid}",
            init_data=init_data,
            app_origin=self.app_origin,
        )
        with self._lock:
            self._launches[app_sid] = launch
        return launch

    def find_launch(self, app_sid):
        """Return the :class:`FrameLaunch` with ``app_sid``, or None."""
        with self._lock:
            return self._launches.get(app_sid)

    def refresh_frame_auth(self, member_id, user_id):
        """Issue fresh tokens for a frame's ``refreshAuth`` and return them as the frame wants."""
        token = self.issue_tokens(member_id, user_id)
        return {
            "AUTH_ID": token.access_token,
            "REFRESH_ID": token.refresh_token,
            "AUTH_EXPIRES": str(int(self.access_lifetime)),
        }

    def finish_install(self, member_id, user_id=1, api_only=False):
        """Mark the app installed, as ``setInstallFinish`` does, and send ONAPPINSTALL.

        :param api_only: installed as an app that uses the API only.
        :raise SandboxError: for an unknown portal or user, or a user who is not an admin.
        """
        portal = self.get_portal(member_id)
        user = self.get_user(member_id, user_id)
        if not user.admin:
            raise SandboxError("Only an administrator can finish the installation.")
        with self._changing():
            portal.installed = True
            portal.uninstalled = False
            portal.api_only = api_only
            portal.install_count += 1
            handlers = [h for h in portal.handlers if h.event == "ONAPPINSTALL"]
        for handler in handlers:
            # A chain per handler: one handler's refresh must not break another's tokens.
            token = self.issue_tokens(member_id, user.id)
            payload = {
                "event": "ONAPPINSTALL",
                "event_handler_id": handler.id,
                "data": {
                    "VERSION": APP_VERSION,
                    "ACTIVE": "Y",
                    "INSTALLED": "Y",
                    "LANGUAGE_ID": LANGUAGE_ID,
                },
                "ts": int(time.time()),
                "auth": {
                    "access_token": token.access_token,
                    "expires": int(token.access_expires),
                    "expires_in": int(self.access_lifetime),
                    "scope": APP_SCOPE,
                    "domain": self.domain,
                    "server_endpoint": self.server_endpoint,
                    "status": APP_STATUS,
                    "client_endpoint": self.client_endpoint,
                    "member_id": member_id,
                    "user_id": user.id,
                    "refresh_token": token.refresh_token,
                    "application_token": portal.application_token,
                },
            }
            self._deliver(member_id, handler, payload)
        return portal

    def install_api_only(self, member_id, user_id=1):
        """Install the app as one that uses the API only, and send ONAPPINSTALL.

        Saving such an app's form binds its initial installation path to ONAPPINSTALL and
        installs it at once: no frame is opened and no ``installFinish`` is needed.

        :raise SandboxError: for an unknown portal or user, a user who is not an admin, or an
            app that is installed already.
        """
        if not self.get_user(member_id, user_id).admin:
            raise SandboxError("Only an administrator can install the application.")
        if self.get_portal(member_id).installed:
            raise SandboxError("The application is installed already; uninstall it first.")
        with suppress(ProtocolError):  # Bound already by an earlier installation.
            self.bind_event(member_id, "ONAPPINSTALL", self.install_url, 0, user_id)
        return self.finish_install(member_id, user_id, api_only=True)

    def uninstall(self, member_id, clean=False):
        """Remove the app: revoke its tokens, drop its handlers and send ONAPPUNINSTALL.

        The next installation gets a new ``application_token``.

        :param clean: whether the admin ticked "delete app data" (``data[CLEAN]``).
        """
        portal = self.get_portal(member_id)
        with self._changing():
            handlers = [h for h in portal.handlers if h.event == "ONAPPUNINSTALL"]
            application_token = portal.application_token
            portal.installed = False
            portal.uninstalled = True
            portal.api_only = False
            portal.handlers = []
            portal.application_token = secrets.token_hex(16)
            for token in self._by_refresh.values():
                if token.member_id == member_id:
                    token.uninstalled = True
        for handler in handlers:
            payload = {
                "event": "ONAPPUNINSTALL",
                "event_handler_id": handler.id,
                "data": {"LANGUAGE_ID": LANGUAGE_ID, "CLEAN": 1 if clean else 0},
                "ts": int(time.time()),
                "auth": {
                    "domain": self.domain,
                    "server_endpoint": self.server_endpoint,
                    "client_endpoint": self.client_endpoint,
                    "member_id": member_id,
                    "application_token": application_token,
                },
            }
            self._deliver(member_id, handler, payload)
        return portal

    # Event handlers.

    def bind_event(self, member_id, event, handler, auth_type, user_id):
        """Bind ``handler`` to ``event`` (already validated) and return the new handler.

        :raise ProtocolError: ``ERROR_CORE`` when the same event and handler are bound already.
        """
        portal = self.get_portal(member_id)
        with self._changing():
            for bound in portal.handlers:
                if bound.event == event and bound.handler == handler:
                    raise ProtocolError(
                        400,
                        "ERROR_CORE",
                        "Unable to set event handler: Handler already binded",
                    )
            bound = EventHandler(self._next_handler_id, event, handler, auth_type, user_id)
            self._next_handler_id += 1
            portal.handlers.append(bound)
        return bound

    def unbind_event(self, member_id, event, handler=None, auth_type=None):
        """Remove the matching handlers of ``event`` and return how many were removed."""
        portal = self.get_portal(member_id)
        with self._changing():
            kept = [
                bound
                for bound in portal.handlers
                if not (
                    bound.event == event
                    and (handler is None or bound.handler == handler)
                    and (auth_type is None or bound.auth_type == auth_type)
                )
            ]
            removed = len(portal.handlers) - len(kept)
            portal.handlers = kept
        return removed

    def bound_events(self, member_id):
        """Return the portal's bound handlers, oldest first."""
        portal = self.get_portal(member_id)
        with self._lock:
            return list(portal.handlers)

    def _deliver(self, member_id, handler, payload):
        """Post ``payload`` to ``handler`` in the background, as the portal's faults say."""
        fault = self.take_fault(member_id, "events", payload["event"])
        kind = fault.kind if fault else None
        if kind == "wrong_token":
            auth = {**payload["auth"], "application_token": secrets.token_hex(16)}
            payload = {**payload, "auth": auth}
        delivery = EventDelivery(
            member_id=member_id,
            event=payload["event"],
            handler=handler.handler,
            event_handler_id=handler.id,
            payload=payload,
            fault=kind,
        )
        if kind:
            log.info("Portal %s: event %s delivered as %s", member_id, delivery.event, kind)
        if kind == "lost":
            delivery.error = "not delivered: lost, as the portal's fault said"
            self._record_delivery(delivery)
            return
        copies = [delivery, replace(delivery)] if kind == "duplicate" else [delivery]
        events.post_in_background(copies, self._record_delivery, delay=fault and fault.delay)

    def _record_delivery(self, delivery):
        with self._delivered:
            self.event_deliveries.append(delivery)
            self._delivered.notify_all()

    def wait_for_event_deliveries(self, count, timeout=5.0):
        """Wait until at least ``count`` deliveries are recorded and return them all."""
        deadline = time.monotonic() + timeout
        with self._delivered:
            while len(self.event_deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._delivered.wait(left)
            return list(self.event_deliveries)

    # Push channels.

    def _live_channel(self, opened, key, member_id, channel_type, user_id):
        now = time.time()
        current = opened.get(key)
        if current is not None and current.end > now:
            return current
        channel = Channel(
            id=secrets.token_hex(16),
            member_id=member_id,
            type=channel_type,
            user_id=user_id,
            start=now,
            end=now + CHANNEL_LIFETIME,
            public_id=secrets.token_hex(16) if channel_type == "private" else "",
        )
        # Only a new channel is a change: every push asks for its channel, and most find it live.
        with self._changing():
            self._channels[channel.id] = channel
            opened[key] = channel
        return channel

    def shared_channel(self, member_id):
        """Return the portal's live shared channel, opening a new one when it expired."""
        self.get_portal(member_id)
        with self._lock:
            return self._live_channel(
                self._shared_channels, member_id, member_id, "shared", SHARED_CHANNEL
            )

    def private_channel(self, member_id, user_id):
        """Return the user's live private channel, opening a new one when it expired."""
        user = self.get_user(member_id, user_id)
        with self._lock:
            return self._live_channel(
                self._private_channels, (member_id, user.id), member_id, "private", user.id
            )

    def pull_config(self, member_id, user_id):
        """Return the ``pull.application.config.get`` result for a user (protocol version 5)."""
        private = self.private_channel(member_id, user_id)
        shared = self.shared_channel(member_id)
        now = time.time()
        scheme = "wss" if self.https else "ws"
        http_scheme = "https" if self.https else "http"
        return {
            "server": {
                "version": 5,
                "server_enabled": True,
                "mode": "personal",
                "hostname": self.domain,
                "long_polling": f"{http_scheme}://{self.domain}/sub/",
                "long_pooling_secure": f"{http_scheme}://{self.domain}/sub/",
                "websocket_enabled": True,
                "websocket": f"{scheme}://{self.domain}/subws/",
                "websocket_secure": f"{scheme}://{self.domain}/subws/",
                "publish_enabled": False,
                "publish": "",
                "publish_secure": "",
                "config_timestamp": self.started_at,
            },
            "api": {"revision_web": 19, "revision_mobile": 3},
            "channels": {"private": private.describe(), "shared": shared.describe()},
            "exp": int(now + PULL_CONFIG_LIFETIME),
            "publicChannels": {
                str(private.user_id): {
                    "user_id": private.user_id,
                    "public_id": private.public_id,
                    "signature": secrets.token_hex(20),
                    "start": iso_time(private.start),
                    "end": iso_time(private.end),
                }
            },
            "serverTime": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        }

    def subscribe(self, channel_ids):
        """Register a push socket for ``channel_ids`` and return its :class:`Subscriber`.

        :raise SandboxError: when a channel is unknown or expired, or the ids span portals.
        """
        now = time.time()
        with self._lock:
            channels = [self._channels.get(channel_id) for channel_id in channel_ids]
            if not channels or any(c is None or c.end <= now for c in channels):
                raise SandboxError("Wrong channel id")
            members = {channel.member_id for channel in channels}
            if len(members) != 1:
                raise SandboxError("Wrong channel id")
            subscriber = Subscriber(members.pop(), channel_ids)
            self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber):
        """Forget a push socket that closed."""
        with self._lock:
            self._subscribers.discard(subscriber)

    def push(self, member_id, user_ids, module_id, command, params):
        """Send one ``incoming.message`` per target channel to every socket listening on it.

        :param user_ids: the users whose private channels get it; empty means the shared
            channel, and user id 0 stands for the shared channel too.
        :return: the :class:`PushedMessage` records, one per channel.
        """
        portal = self.get_portal(member_id)
        targets = []
        for user_id in dict.fromkeys(user_ids or [SHARED_CHANNEL]):
            if user_id == SHARED_CHANNEL:
                targets.append(self.shared_channel(member_id))
            elif user_id in portal.users:
                targets.append(self.private_channel(member_id, user_id))
            # Users the portal does not have have no channel; the message goes nowhere.

        oversized = len(json.dumps(params)) > PUSH_PAYLOAD_LIMIT
        records = []
        now = time.time()
        for channel in targets:
            mid = uuid.uuid4().hex
            frame = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "incoming.message",
                    "params": {
                        "mid": mid,
                        "body": {
                            "module_id": module_id,
                            "command": command,
                            "params": params,
                            "extra": {
                                "server_time": iso_time(now),
                                "server_time_unix": round(now, 3),
                                "server_name": self.domain,
                                "revision_web": 19,
                                "revision_mobile": 3,
                            },
                        },
                        "sender": {"type": 2},
                    },
                }
            )
            with self._lock:
                listeners = [
                    subscriber
                    for subscriber in self._subscribers
                    if channel.id in subscriber.channel_ids
                ]
                # A payload over the limit is accepted by REST and then dropped, as on a portal.
                if oversized:
                    listeners = []
                for subscriber in listeners:
                    subscriber.outbox.put(frame)
                record = PushedMessage(
                    member_id=member_id,
                    channel=channel.id,
                    channel_type=channel.type,
                    user_id=channel.user_id,
                    module_id=module_id,
                    command=command,
                    params=params,
                    mid=mid,
                    delivered_to=len(listeners),
                )
                self.pushed_messages.append(record)
            records.append(record)
        return records

    # The state file.

    @contextmanager
    def _changing(self):
        """Hold the lock while durable state changes, then write the state file once.

        Changes nest (a refresh issues tokens); the file is written when the outermost one ends.
        A change that raises writes nothing.
        """
        with self._lock:
            self._change_depth += 1
            try:
                yield
            finally:
                self._change_depth -= 1
            if self._change_depth == 0:
                self._save()

    def _snapshot(self):
        """Return the durable state as the state file's JSON object."""
        portals = []
        for portal in self._portals.values():
            stored = asdict(portal)
            stored["users"] = list(stored["users"].values())
            portals.append(stored)
        channels = [*self._shared_channels.values(), *self._private_channels.values()]
        return {
            "version": STATE_FILE_VERSION,
            "next_app_id": self._next_app_id,
            "next_handler_id": self._next_handler_id,
            "portals": portals,
            # Every token is indexed by its refresh token; used-up ones too, to refuse them.
            "tokens": [asdict(token) for token in self._by_refresh.values()],
            "channels": [asdict(channel) for channel in channels],
        }

    def _save(self):
        """Write the state file atomically; on failure log once and keep going in memory."""
        if not self.state_file:
            return
        text = json.dumps(self._snapshot(), indent=1)
        folder = os.path.dirname(os.path.abspath(self.state_file))
        temporary = None
        try:
            os.makedirs(folder, exist_ok=True)
            # mkstemp creates the file readable by its owner only, and the file holds tokens.
            handle, temporary = tempfile.mkstemp(
                dir=folder, prefix=".sandbox-state-", suffix=".tmp"
            )
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
            # No fsync: after a crash the file is the old one or unreadable, and an unreadable
            # file is set aside at the next start; a dev sandbox need not pay for more.
            os.replace(temporary, self.state_file)
        except OSError as error:
            if temporary is not None:
                with suppress(OSError):
                    os.remove(temporary)
            if not self._save_failing:
                log.error(
                    "Sandbox state not saved to %s, it will be lost at restart: %s",
                    self.state_file,
                    error,
                )
            self._save_failing = True
            return
        if self._save_failing:
            log.info("Sandbox state saved to %s again", self.state_file)
        self._save_failing = False

    def _load(self):
        """Read the state file, if there is one; set an unreadable one aside and start empty."""
        try:
            with open(self.state_file, encoding="utf-8") as file:
                stored = json.load(file)
            restored = _restore_state(stored)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            self._set_aside(error)
            return

        portals, tokens, channels, next_app_id, next_handler_id = restored
        self._portals = {portal.member_id: portal for portal in portals}
        self._by_refresh = {token.refresh_token: token for token in tokens}
        # A refresh drops the used-up link from the access index; rebuild that index the same way.
        self._by_access = {token.access_token: token for token in tokens if not token.revoked}
        self._member_by_access = {token.access_token: token.member_id for token in tokens}
        for channel in channels:
            self._channels[channel.id] = channel
            if channel.type == "shared":
                self._shared_channels[channel.member_id] = channel
            else:
                self._private_channels[(channel.member_id, channel.user_id)] = channel
        self._next_app_id = next_app_id
        self._next_handler_id = next_handler_id
        log.info("Sandbox state: %d portal(s) loaded from %s", len(portals), self.state_file)

    def _set_aside(self, error):
        """Rename the unreadable state file out of the way and log one warning saying why."""
        # Say what was wrong without quoting the file: its values are tokens.
        if isinstance(error, (OSError, json.JSONDecodeError)):
            reason = str(error)
        else:
            reason = f"unexpected content ({type(error).__name__})"
        aside = f"{self.state_file}.corrupt-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
        try:
            os.replace(self.state_file, aside)
            kept = f"it was kept as {aside}"
        except OSError as rename_error:
            kept = f"it could not be set aside ({rename_error.strerror}) and will be overwritten"
        log.warning(
            "Sandbox state file %s is unreadable (%s); %s, and the sandbox starts empty",
            self.state_file,
            reason,
            kept,
        )


def _restore(kind, record):
    """Build the dataclass ``kind`` from a stored record, refusing missing or mistyped fields.

    :raise KeyError: when a field is missing.
    :raise ValueError: when a field has the wrong type.
    """
    values = {}
    for item in fields(kind):
        if item.name not in record and item.default is not MISSING:
            # A field added after the file was written: it has the default it had then.
            continue
        value = record[item.name]
        # JSON writes a float with no fraction the way it writes an int.
        if item.type is float and type(value) is int:
            value = float(value)
        if type(value) not in (typing.get_args(item.type) or (item.type,)):
            raise ValueError(f"{kind.__name__}.{item.name} has the wrong type")
        values[item.name] = value
    return kind(**values)


def _restore_state(stored):
    """Return portals, tokens, channels and the next app and handler ids from the file's JSON.

    :raise ValueError: when the file has another version or a field has the wrong type.
    """
    if stored.get("version") != STATE_FILE_VERSION:
        raise ValueError(f"state file version {stored.get('version')!r} is not supported")
    portals = []
    for record in stored["portals"]:
        record = dict(record)
        users = [_restore(User, user) for user in record["users"]]
        record["users"] = {user.id: user for user in users}
        record["handlers"] = [_restore(EventHandler, handler) for handler in record["handlers"]]
        portal = _restore(Portal, record)
        if portal.condition is not None and portal.condition not in PORTAL_CONDITIONS:
            raise ValueError("Portal.condition is not a known condition")
        portals.append(portal)
    tokens = [_restore(Token, record) for record in stored["tokens"]]
    channels = [_restore(Channel, record) for record in stored["channels"]]
    next_app_id = stored["next_app_id"]
    next_handler_id = stored["next_handler_id"]
    if type(next_app_id) is not int or type(next_handler_id) is not int:
        raise ValueError("the next ids must be integers")
    return portals, tokens, channels, next_app_id, next_handler_id
