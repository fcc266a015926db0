"""Settings, read from the environment (and an optional ``.env`` file) with a default beside each.

Sandbox mode is on when no real ``B24_CLIENT_ID`` is configured: the app then talks to the
built-in sandbox portal, whose OAuth server issues the app's credentials itself.
"""

import binascii
import math
import os
import re
import secrets
import tempfile
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

MODULE_ID_PATTERN = re.compile(r"^[a-z0-9._]+$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
# Bitrix24's OAuth servers: the international one and the one of the Russian region.
KNOWN_OAUTH_SERVERS = "https://oauth.bitrix.info,https://oauth.bitrix24.tech"

# The sandbox app's credentials; they are only ever accepted by the sandbox's own OAuth server.
SANDBOX_CLIENT_ID = "local.sandbox00000000.00000001"
SANDBOX_CLIENT_SECRET = "sandbox-client-secret"  # noqa: S105 (sandbox only)
SANDBOX_OAUTH_PATH = "/oauth-server"
# How to make a key for TOKEN_ENCRYPTION_KEYS, as the error messages tell the operator.
TOKEN_KEY_RECIPE = (
    'python -c "from cryptography.fernet import Fernet; '  # noqa: S105 (a command, not a key)
    'print(Fernet.generate_key().decode())"'
)

# Bounds of the numeric settings. The upper ones refuse values no one means and keep date
# arithmetic (now + an age) far from overflowing.
HOUR = 3600
DAY = 24 * HOUR
YEAR = 365 * DAY
# A heartbeat needs no more than 20 pings a second; far shorter intervals starve the scheduler
# (at 1e-9 s no ping went out at all).
MIN_PING_INTERVAL = 0.05
MAX_RETENTION_DAYS = 36500


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message says which and how to fix it."""


def _env(name, default=None):
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _env_number(name, default, low, high, unit="", *, whole=False, note=""):
    """Return the setting ``name``: a finite number from ``low`` to ``high``, or ``default``.

    :param low: the smallest value allowed, or None for any number above 0.
    :param unit: what the number counts ("seconds", "days"), named in the error message.
    :param whole: whether the number must be whole; it is then returned as an int.
    :param note: said after the range in the error message, e.g. " (a year)".
    :raise ConfigError: when the setting is not such a number (nan and infinities never are);
        the message names the setting, its range and the value given.
    """
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    above = value > 0 if low is None else low <= value
    if not (math.isfinite(value) and above and value <= high) or (
        whole and not value.is_integer()
    ):
        kind = ("whole number" if whole else "number") + (f" of {unit}" if unit else "")
        if low is None:
            rule = f"a positive {kind}, at most {_plain(high)}{note}"
        else:
            rule = f"a {kind} from {_plain(low)} to {_plain(high)}{note}"
        raise ConfigError(f"{name} must be {rule}, got {raw!r}.")
    return int(value) if whole else value


def _plain(number):
    """Return ``number`` as the operator would write it: 86400, 0.05 (never 8.64e+04)."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def _env_bool(name, default):
    raw = _env(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}.")


def _sandbox_secret(instance_path, file_name, make):
    """Return a sandbox secret kept in the instance folder, made with ``make()`` the first time.

    Keeping it across restarts lets app pages that stay open keep their tokens, and lets the
    database's encrypted tokens stay readable.

    :param file_name: the secret's file in the instance folder, readable by its owner only.
    :param make: a function that returns a new secret as a string.
    """
    path = os.path.join(instance_path, file_name)
    try:
        with open(path) as file:
            secret = file.read().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    # Processes starting together (server and scheduler) must all end up with one secret:
    # each writes its own candidate aside, and the first to link it into place wins.
    descriptor, candidate = tempfile.mkstemp(dir=instance_path, prefix=f".{file_name}-")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(make())
        if _empty_file(path):
            os.replace(candidate, path)
        else:
            os.link(candidate, path)
    except FileExistsError:
        pass
    finally:
        if os.path.exists(candidate):
            os.unlink(candidate)
    with open(path) as file:
        return file.read().strip()


def _empty_file(path):
    """Return whether ``path`` exists but holds nothing (left by an interrupted start)."""
    try:
        return os.path.getsize(path) == 0
    except FileNotFoundError:
        return False


def token_encryption_keys(raw):
    """Return the Fernet keys listed in ``raw`` (comma-separated), checking each.

    :raise ConfigError: when a key is malformed; the message never repeats the key.
    """
    keys = [key.strip() for key in raw.split(",") if key.strip()]
    for number, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, binascii.Error):
            raise ConfigError(
                f"TOKEN_ENCRYPTION_KEYS holds a malformed key (key {number} of {len(keys)}): "
                f"each must be a Fernet key, made with: {TOKEN_KEY_RECIPE}"
            ) from None
    return tuple(keys)


def _is_http_url(value):
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def load_config(instance_path):
    """Return the app's settings as a dict, read from the environment.

    :param instance_path: the Flask instance folder, home of the default SQLite database and
        the sandbox's state file.
    :raise ConfigError: when a setting is invalid, or a production setting is missing.
    """
    client_id = _env("B24_CLIENT_ID")
    sandbox = client_id is None
    public_url = _env("B24_PUBLIC_URL", "http://127.0.0.1:5000").rstrip("/")
    sandbox_url = _env("B24_SANDBOX_URL", "http://localhost:5000").rstrip("/")

    config = {
        "SANDBOX": sandbox,
        "B24_CLIENT_ID": client_id or SANDBOX_CLIENT_ID,
        "B24_CLIENT_SECRET": _env("B24_CLIENT_SECRET"),
        "SECRET_KEY": _env("SECRET_KEY"),
        # The first key encrypts the tokens written; every key decrypts (see encryption.py).
        "TOKEN_ENCRYPTION_KEYS": token_encryption_keys(_env("TOKEN_ENCRYPTION_KEYS", "")),
        "DATABASE_URL": _env(
            "DATABASE_URL", "sqlite:///" + os.path.join(instance_path, "b24app.sqlite3")
        ),
        "PING_INTERVAL": _env_number("PING_INTERVAL", 1.0, MIN_PING_INTERVAL, DAY, "seconds"),
        "PULL_MODULE_ID": _env("PULL_MODULE_ID", "main"),
        "OAUTH_SERVER": _env("B24_OAUTH_SERVER", "https://oauth.bitrix.info").rstrip("/"),
        "OAUTH_SERVERS": [
            server.strip().rstrip("/")
            for server in _env("B24_OAUTH_SERVERS", KNOWN_OAUTH_SERVERS).split(",")
            if server.strip()
        ],
        "PUBLIC_URL": public_url,
        "JSSDK_URL": _env("B24_JSSDK_URL", "/vendor/b24jssdk/index.min.js"),
        "REST_TIMEOUT": _env_number("REST_TIMEOUT", 10.0, None, HOUR, "seconds"),
        # Longer than REST's: a refresh the app gives up on may still use the token up.
        "OAUTH_TIMEOUT": _env_number("OAUTH_TIMEOUT", 30.0, None, HOUR, "seconds"),
        "REST_ATTEMPTS": _env_number("REST_ATTEMPTS", 3, 1, 10, whole=True),
        "BACKOFF_MAX": _env_number("BACKOFF_MAX", 300.0, None, DAY, "seconds"),
        "PAGE_TOKEN_MAX_AGE": _env_number(
            "PAGE_TOKEN_MAX_AGE", 3600.0, None, YEAR, "seconds", note=" (a year)"
        ),
        "ADMIN_TOKEN_MAX_AGE": _env_number(
            "ADMIN_TOKEN_MAX_AGE", 3600.0, None, YEAR, "seconds", note=" (a year)"
        ),
        "EVENT_LOG_RETENTION_DAYS": _env_number(
            "EVENT_LOG_RETENTION_DAYS", 30.0, None, MAX_RETENTION_DAYS, "days"
        ),
        "SCHEDULER_IN_SERVER": _env_bool("SCHEDULER_IN_SERVER", True),
        "SANDBOX_URL": sandbox_url,
        # The app accepts a frame's AUTH_EXPIRES from 1 to 86400 seconds (see bitrix/frame.py).
        "SANDBOX_ACCESS_TOKEN_LIFETIME": _env_number(
            "SANDBOX_ACCESS_TOKEN_LIFETIME", 3600.0, 1, DAY, "seconds"
        ),
        # 0 or less issues refresh tokens that have already expired: a test of that case.
        "SANDBOX_REFRESH_TOKEN_LIFETIME": _env_number(
            "SANDBOX_REFRESH_TOKEN_LIFETIME",
            180.0 * DAY,
            -10 * YEAR,
            10 * YEAR,
            "seconds",
            note=" (10 years; 0 or less issues expired tokens)",
        ),
        # A cloud portal's request limit: a bucket of 50 requests that drains 2 a second.
        "SANDBOX_RATE_LIMIT": _env_number(
            "SANDBOX_RATE_LIMIT", 50, 0, 1_000_000, whole=True, note=" (0: no rate limit)"
        ),
        "SANDBOX_RATE_DRAIN": _env_number(
            "SANDBOX_RATE_DRAIN", 2.0, 0, 1_000_000, note=" (0: no rate limit)"
        ),
        "SANDBOX_STATE_FILE": _env(
            "SANDBOX_STATE_FILE", os.path.join(instance_path, "sandbox-state.json")
        ),
        "LOG_LEVEL": _env("LOG_LEVEL", "INFO").upper(),
        # Portals post small forms; anything larger is refused before it is read (413).
        "MAX_CONTENT_LENGTH": 1024 * 1024,
    }

    if config["LOG_LEVEL"] not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}.")
    for name in ("PUBLIC_URL", "OAUTH_SERVER", "SANDBOX_URL"):
        if not _is_http_url(config[name]):
            raise ConfigError(f"B24_{name} must be an http(s) URL, got {config[name]!r}.")
    for server in config["OAUTH_SERVERS"]:
        if not _is_http_url(server):
            raise ConfigError(f"B24_OAUTH_SERVERS must list http(s) URLs, got {server!r}.")
    # The default server is always an allowed one, and the first.
    config["OAUTH_SERVERS"] = [config["OAUTH_SERVER"]] + [
        server for server in config["OAUTH_SERVERS"] if server != config["OAUTH_SERVER"]
    ]
    if not MODULE_ID_PATTERN.match(config["PULL_MODULE_ID"]):
        raise ConfigError(
            "PULL_MODULE_ID may hold only lower-case letters, digits, dots and underscores; "
            f"got {config['PULL_MODULE_ID']!r}."
        )

    if sandbox:
        # The sandbox portal plays the OAuth server too; nothing leaves this machine.
        config["OAUTH_SERVER"] = sandbox_url + SANDBOX_OAUTH_PATH
        # Only servers named on purpose join the sandbox's own, e.g. another sandbox that
        # plays a second region.
        listed = config["OAUTH_SERVERS"] if _env("B24_OAUTH_SERVERS") else []
        config["OAUTH_SERVERS"] = [config["OAUTH_SERVER"]] + listed
        config["B24_CLIENT_SECRET"] = config["B24_CLIENT_SECRET"] or SANDBOX_CLIENT_SECRET
        config["SECRET_KEY"] = config["SECRET_KEY"] or _sandbox_secret(
            instance_path, "sandbox-secret-key", lambda: secrets.token_hex(32)
        )
        config["TOKEN_ENCRYPTION_KEYS"] = config["TOKEN_ENCRYPTION_KEYS"] or (
            token_encryption_keys(
                _sandbox_secret(
                    instance_path, "sandbox-token-key", lambda: Fernet.generate_key().decode()
                )
            )
        )
    else:
        missing = [
            name
            for name, value in (
                ("B24_CLIENT_SECRET", config["B24_CLIENT_SECRET"]),
                ("SECRET_KEY", config["SECRET_KEY"]),
                ("B24_PUBLIC_URL", _env("B24_PUBLIC_URL")),
                ("TOKEN_ENCRYPTION_KEYS", config["TOKEN_ENCRYPTION_KEYS"]),
            )
            if not value
        ]
        if missing:
            message = (
                "B24_CLIENT_ID is set, so the app runs against a real portal and needs "
                + ", ".join(missing)
                + " as well (see .env.example)."
            )
            if "TOKEN_ENCRYPTION_KEYS" in missing:
                message += f" Make a key for TOKEN_ENCRYPTION_KEYS with: {TOKEN_KEY_RECIPE}"
            raise ConfigError(message)
        if len(config["SECRET_KEY"]) < 32:
            raise ConfigError("SECRET_KEY must be at least 32 characters long.")
        public = urlsplit(public_url)
        # A portal is served over https, and browsers block an http page framed inside it.
        if public.scheme != "https" and public.hostname not in LOOPBACK_HOSTS:
            raise ConfigError(f"B24_PUBLIC_URL must be an https URL, got {public_url!r}.")
    return config
