"""The portals' OAuth tokens, encrypted at rest with keys that can be rotated.

``TOKEN_ENCRYPTION_KEYS`` lists Fernet keys: the first encrypts every token written, and each
of them decrypts. To rotate, put a new key in front, run ``flask --app wsgi rotate-token-keys``,
then drop the old key. The token columns use :class:`EncryptedText`, so the rest of the app reads
and writes plaintext; only :func:`encrypt_stored_tokens` works on the raw column values.
"""

import base64
import binascii
import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app, jsonify, request
from sqlalchemy import (
    Integer,
    String,
    Text,
    TypeDecorator,
    and_,
    column,
    func,
    or_,
    select,
    table,
    update,
)

from b24app.config import token_encryption_keys
from b24app.db import reading, transaction

log = logging.getLogger(__name__)

TOKEN_COLUMNS = ("access_token", "refresh_token", "application_token")
# Every Fernet token starts with its version byte and a timestamp whose high bytes are zero.
FERNET_PREFIX = "gAAAAA"
# Version, timestamp, IV and HMAC take 57 bytes; the ciphertext is whole 16-byte blocks.
_FERNET_OVERHEAD = 57

# The portals table as stored, without EncryptedText: for changing rows written in any state.
_stored_portals = table(
    "portals",
    column("id", Integer),
    column("member_id", String),
    *(column(name, Text) for name in TOKEN_COLUMNS),
)


class TokenKeyError(RuntimeError):
    """A stored token cannot be read with ``TOKEN_ENCRYPTION_KEYS``; the message says why.

    :param member_id: the portal whose token it is, when known.
    :param unencrypted: whether the token was never encrypted (written by an earlier version)
        rather than encrypted with a key no longer configured.
    """

    def __init__(self, member_id=None, unencrypted=False):
        portal = f" (portal {member_id})" if member_id else ""
        if unencrypted:
            message = (
                f"a stored token{portal} is not encrypted yet; "
                "run `flask --app wsgi db-upgrade` to encrypt it."
            )
        else:
            message = (
                f"a stored token{portal} cannot be decrypted with TOKEN_ENCRYPTION_KEYS; "
                "put back the key it was encrypted with, after the current one, and run "
                "`flask --app wsgi rotate-token-keys` before dropping that key again."
            )
        super().__init__(message)
        self.member_id = member_id
        self.unencrypted = unencrypted


def looks_encrypted(value):
    """Return whether ``value`` has the shape of a Fernet token (it may be under any key)."""
    if not value.startswith(FERNET_PREFIX):
        return False
    try:
        length = len(base64.urlsafe_b64decode(value.encode("ascii")))
    except (ValueError, binascii.Error):
        return False
    return length > _FERNET_OVERHEAD and (length - _FERNET_OVERHEAD) % 16 == 0


class TokenCipher:
    """Encrypt with the first of ``keys`` and decrypt with any of them.

    :param keys: Fernet keys (url-safe base64 strings), the current one first.
    """

    def __init__(self, keys):
        if not keys:
            raise ValueError("at least one key is needed")
        self._current = Fernet(keys[0])
        self._any = MultiFernet([Fernet(key) for key in keys])

    def encrypt(self, plaintext):
        """Return ``plaintext`` encrypted with the current key."""
        return self._current.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, stored):
        """Return the plaintext of ``stored``.

        :raise TokenKeyError: when no key decrypts it, or it was never encrypted.
        """
        if not looks_encrypted(stored):
            raise TokenKeyError(unencrypted=True)
        try:
            return self._any.decrypt(stored.encode("ascii")).decode()
        except InvalidToken:
            raise TokenKeyError() from None

    def renewed(self, stored, rotate):
        """Return ``stored`` as it should be stored now, or None when it needs no change.

        Plaintext (written before tokens were encrypted) is encrypted. With ``rotate``, a
        ciphertext under an older key is encrypted again with the current key.

        :raise TokenKeyError: with ``rotate``, when no key decrypts ``stored``.
        """
        if not looks_encrypted(stored):
            return self.encrypt(stored)
        if not rotate:
            return None
        try:
            self._current.decrypt(stored.encode("ascii"))
            return None
        except InvalidToken:
            pass
        try:
            return self._any.rotate(stored.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise TokenKeyError() from None


class EncryptedText(TypeDecorator):
    """Text stored encrypted with the current app's :class:`TokenCipher`, read as plaintext."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return current_cipher().encrypt(value)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return current_cipher().decrypt(value)


def init_app(app):
    """Create the app's token cipher and answer an unreadable token without a stack trace."""
    keys = app.config["TOKEN_ENCRYPTION_KEYS"]
    if isinstance(keys, str):
        # As a test_config may give them: the environment's comma-separated form.
        keys = token_encryption_keys(keys)
    app.extensions["b24app.cipher"] = TokenCipher(keys)
    app.register_error_handler(TokenKeyError, _answer_token_key_error)


def current_cipher():
    """Return the current app's token cipher."""
    return current_app.extensions["b24app.cipher"]


def _answer_token_key_error(error):
    """Log why the stored tokens are unreadable, and tell the client only that they are."""
    log.error("Cannot serve %s %s: %s", request.method, request.path, error)
    return jsonify(
        error="The app cannot read the tokens it stored; its administrator must check "
        "TOKEN_ENCRYPTION_KEYS."
    ), 500


def encrypt_stored_tokens(rotate=False, batch_size=200):
    """Bring every stored token under the current key; return how many portals changed.

    Plaintext tokens are encrypted; with ``rotate``, tokens under older keys are encrypted again.
    Each batch of rows is one transaction, and a row is only changed if its tokens are still
    the ones read, so a token the app renews meanwhile is never overwritten with an old one.
    Running it again changes nothing.

    :raise TokenKeyError: with ``rotate``, when a token cannot be decrypted with any key; the
        batch it is in is left unchanged.
    """
    cipher = current_cipher()
    portals = _stored_portals
    changed = 0
    last_id = 0
    while True:
        with transaction() as session:
            # Locked, so that the app's own writes to these rows wait for the batch (PostgreSQL
            # locks the rows; SQLite the whole database once the batch writes).
            rows = session.execute(
                select(portals)
                .where(portals.c.id > last_id)
                .order_by(portals.c.id)
                .limit(batch_size)
                .with_for_update()
            ).all()
            for row in rows:
                values = {}
                for name in TOKEN_COLUMNS:
                    stored = getattr(row, name)
                    if stored is None:
                        continue
                    try:
                        renewed = cipher.renewed(stored, rotate)
                    except TokenKeyError as exc:
                        raise TokenKeyError(row.member_id, exc.unencrypted) from None
                    if renewed is not None:
                        values[name] = renewed
                if values:
                    still_read = [portals.c[name] == getattr(row, name) for name in values]
                    changed += session.execute(
                        update(portals).where(portals.c.id == row.id, *still_read).values(values)
                    ).rowcount
        if len(rows) < batch_size:
            return changed
        last_id = rows[-1].id


def stored_token_problem():
    """Return why the stored tokens cannot be read with the configured keys, or None if they can.

    It looks for a token stored unencrypted, then decrypts the tokens of one portal (the oldest
    that has any): cheap enough for every start, and enough to catch a key dropped too early,
    since a portal's ``application_token`` is written once and never renewed.
    """
    portals = _stored_portals
    columns = [portals.c[name] for name in TOKEN_COLUMNS]
    with reading() as session:
        unencrypted = session.execute(
            select(portals.c.member_id)
            .where(
                or_(
                    *(
                        and_(stored.is_not(None), func.substr(stored, 1, 6) != FERNET_PREFIX)
                        for stored in columns
                    )
                )
            )
            .limit(1)
        ).first()
        if unencrypted is not None:
            return str(TokenKeyError(unencrypted.member_id, unencrypted=True))
        oldest = session.execute(
            select(portals)
            .where(or_(*(stored.is_not(None) for stored in columns)))
            .order_by(portals.c.id)
            .limit(1)
        ).first()
    if oldest is None:
        return None
    cipher = current_cipher()
    try:
        for name in TOKEN_COLUMNS:
            if getattr(oldest, name) is not None:
                cipher.decrypt(getattr(oldest, name))
    except TokenKeyError as exc:
        return str(TokenKeyError(oldest.member_id, exc.unencrypted))
    return None
