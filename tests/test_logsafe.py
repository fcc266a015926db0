"""Tokens and secrets masked: mask() over each pattern, and every formatted line of real flows."""

import io
import logging
import secrets
import socket
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import update

from b24app import create_app, logsafe
from b24app.admin import operator_link
from b24app.bitrix import oauth_client, rest_client
from b24app.bitrix.errors import AccessLost, RefreshAndRetry
from b24app.db import transaction
from b24app.logsafe import MaskingFormatter, mask
from b24app.models import Portal
from b24app.scheduler import send_ping
from tests.conftest import frame_post, install_portal, stored
from tests.test_encryption import raw_tokens

CIPHERTEXT = Fernet(Fernet.generate_key()).encrypt(b"access-token").decode()


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            '"GET /oauth/token/?grant_type=refresh_token&client_id=local.1&client_secret=s3c'
            '&refresh_token=r3f HTTP/1.1" 200 -',
            '"GET /oauth/token/?grant_type=refresh_token&client_id=local.1&client_secret=[hidden]'
            '&refresh_token=[hidden] HTTP/1.1" 200 -',
        ),
        ("POST /rest/profile.json?auth=abc123", "POST /rest/profile.json?auth=[hidden]"),
        ("access_token=abc&expires_in=3600", "access_token=[hidden]&expires_in=3600"),
        (
            "DOMAIN=x.bitrix24.com&AUTH_ID=abc&AUTH_EXPIRES=3600&REFRESH_ID=def&member_id=m1",
            "DOMAIN=x.bitrix24.com&AUTH_ID=[hidden]&AUTH_EXPIRES=3600&REFRESH_ID=[hidden]"
            "&member_id=m1",
        ),
        ("APPLICATION_TOKEN=t1&PLACEMENT=DEFAULT", "APPLICATION_TOKEN=[hidden]&PLACEMENT=DEFAULT"),
        ("application_token=t1", "application_token=[hidden]"),
        (
            '"GET /admin/operator?token=eyJ.abc HTTP/1.1" 200 -',
            '"GET /admin/operator?token=[hidden] HTTP/1.1" 200 -',
        ),
        (
            '{"token": "eyJ.abc", "kind": "ping_send"}',
            '{"token": "[hidden]", "kind": "ping_send"}',
        ),
        ("CHANNEL_ID=c1&CHANNEL_DT=1", "CHANNEL_ID=[hidden]&CHANNEL_DT=1"),
        (
            "event=ONAPPINSTALL&auth[access_token]=abc&auth[domain]=x.bitrix24.com"
            "&auth[application_token]=t1",
            "event=ONAPPINSTALL&auth[access_token]=[hidden]&auth[domain]=x.bitrix24.com"
            "&auth[application_token]=[hidden]",
        ),
        (
            "auth%5Baccess_token%5D=abc&auth%5Bmember_id%5D=m1&auth%5brefresh_token%5d=def",
            "auth%5Baccess_token%5D=[hidden]&auth%5Bmember_id%5D=m1"
            "&auth%5brefresh_token%5d=[hidden]",
        ),
        (
            '{"access_token": "abc", "expires_in": 3600, "refresh_token":"def", "domain": "x"}',
            '{"access_token": "[hidden]", "expires_in": 3600, "refresh_token":"[hidden]", '
            '"domain": "x"}',
        ),
        ('{"auth": "abc", "COMMAND": "ping"}', '{"auth": "[hidden]", "COMMAND": "ping"}'),
        ("{'client_secret': 'xyz', 'a': 'b'}", "{'client_secret': '[hidden]', 'a': 'b'}"),
        (
            r'"{\"auth\": {\"access_token\": \"abc\"}}"',
            r'"{\"auth\": {\"access_token\": \"[hidden]\"}}"',
        ),
        ("[('AUTH_ID', 'abc'), ('DOMAIN', 'x')]", "[('AUTH_ID', '[hidden]'), ('DOMAIN', 'x')]"),
        (
            "TokenSet(access_token='abc', refresh_token='def', member_id='m1')",
            "TokenSet(access_token='[hidden]', refresh_token='[hidden]', member_id='m1')",
        ),
        ("Authorization: Bearer eyJhbGc.iOiJI-UzI1_NiJ9=", "Authorization: Bearer [hidden]"),
        ("{'Authorization': 'bearer abc.def'}", "{'Authorization': 'bearer [hidden]'}"),
        (f"stored {CIPHERTEXT} in the row", "stored [hidden] in the row"),
    ],
)
def test_mask_hides_the_values_and_keeps_the_names(text, masked):
    assert mask(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "grant_type=refresh_token&client_id=local.1",
        "member_id=abc&domain=x.bitrix24.com&auth[expires_in]=3600",
        "oauth=1&author=me&authority=x",
        '{"refresh_token_used": 1, "status": "L"}',
        "Verified install handshake for portal 0123 (x.bitrix24.com), user 1",
        "A page token is required (Authorization: Bearer …).",
    ],
)
def test_mask_leaves_everything_else_alone(text):
    assert mask(text) == text


def test_mask_takes_any_object():
    assert mask({"refresh_token": "abc"}) == "{'refresh_token': '[hidden]'}"


def make_logger(name):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, handler, stream


def test_installed_formatter_masks_message_traceback_and_stack_and_keeps_the_layout():
    logger, handler, stream = make_logger("tests.logsafe.formatter")
    try:
        logsafe.install(logger)
        logsafe.install(logger)
        assert isinstance(handler.formatter, MaskingFormatter)
        assert not isinstance(handler.formatter.inner, MaskingFormatter)

        logger.info("Refreshing with %s", "refresh_token=r3f")
        try:
            raise ValueError("no answer from https://x/oauth/token/?client_secret=s3c")
        except ValueError:
            logger.exception("Refresh failed: %r", {"access_token": "a9c"}, stack_info=True)
    finally:
        logger.removeHandler(handler)

    output = stream.getvalue()
    assert output.startswith(
        "INFO tests.logsafe.formatter: Refreshing with refresh_token=[hidden]"
    )
    assert "ERROR tests.logsafe.formatter: Refresh failed: {'access_token': '[hidden]'}" in output
    assert "ValueError: no answer from https://x/oauth/token/?client_secret=[hidden]" in output
    assert "Traceback (most recent call last)" in output
    assert "Stack (most recent call last)" in output
    for secret in ("r3f", "s3c", "a9c"):
        assert secret not in output


def test_the_masking_filter_rewrites_the_record_for_every_handler():
    logger, handler, stream = make_logger("tests.logsafe.filter")
    records = []
    logger.addFilter(logsafe.MaskingFilter())
    logger.addHandler(collector := logging.Handler())
    collector.emit = records.append
    try:
        logger.info('"GET /oauth/token/?%s HTTP/1.1"', "client_secret=s3c&refresh_token=r3f")
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(collector)

    message = '"GET /oauth/token/?client_secret=[hidden]&refresh_token=[hidden] HTTP/1.1"'
    assert [record.getMessage() for record in records] == [message]
    assert stream.getvalue() == f"INFO tests.logsafe.filter: {message}\n"


def test_the_app_factory_masks_the_root_and_gunicorn_handlers():
    root = logging.getLogger()
    gunicorn_access = logging.getLogger("gunicorn.access")
    handlers = [logging.StreamHandler(io.StringIO()) for _ in range(2)]
    root.addHandler(handlers[0])
    gunicorn_access.addHandler(handlers[1])
    try:
        create_app()
        assert [type(handler.formatter) for handler in handlers] == [MaskingFormatter] * 2
    finally:
        root.removeHandler(handlers[0])
        gunicorn_access.removeHandler(handlers[1])


def closed_port():
    """Return a local port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def captured_output(caplog):
    """Yield a stream that a real root handler writes to, with the app's formatter once made."""
    # The root must pass debug records on; caplog restores its level afterwards.
    caplog.set_level(logging.DEBUG)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    yield stream, handler
    logging.getLogger().removeHandler(handler)


def test_no_token_or_secret_reaches_a_log_line_in_real_flows(
    live_server_factory, captured_output, caplog
):
    stream, handler = captured_output
    server = live_server_factory(env={"LOG_LEVEL": "DEBUG"})
    assert isinstance(handler.formatter, MaskingFormatter)
    sandbox, app = server.sandbox, server.app
    secret_values = {app.config["B24_CLIENT_SECRET"], *app.config["TOKEN_ENCRYPTION_KEYS"]}

    # Install handshakes (one left pending) and the opening of the app.
    launch = sandbox.frame_launch(sandbox.create_portal().member_id)
    secret_values |= {launch.form["AUTH_ID"], launch.form["REFRESH_ID"]}
    frame_post(launch)
    portal = install_portal(server)
    member_id = portal.member_id
    first = stored(server, member_id)
    secret_values |= {first.access_token, first.refresh_token, first.application_token}
    secret_values |= {portal.application_token}

    # A REST call whose access token has expired: refreshed over the OAuth server's GET.
    sandbox.expire_access_tokens(member_id)
    with app.app_context():
        assert send_ping(member_id, app.config["PULL_MODULE_ID"]) == 1
    renewed = stored(server, member_id)
    assert renewed.refresh_token != first.refresh_token
    secret_values |= {renewed.access_token, renewed.refresh_token}
    secret_values |= {
        value for row in raw_tokens(app.config["DATABASE_URL"]).values() for value in row
    }

    # Failing OAuth calls: a refresh token the server refuses, and a token app.info refuses.
    refused_refresh = "refused-" + secrets.token_hex(16)
    refused_access = "refused-" + secrets.token_hex(16)
    secret_values |= {refused_refresh, refused_access}
    with app.app_context():
        with transaction() as session:
            session.execute(
                update(Portal)
                .where(Portal.member_id == member_id)
                .values(refresh_token=refused_refresh)
            )
        sandbox.expire_access_tokens(member_id)
        with pytest.raises(AccessLost, match="invalid_grant"):
            rest_client().call(member_id, "server.time")
        with pytest.raises(RefreshAndRetry):
            oauth_client().app_info(refused_access)
    # A failure logged with its traceback, whose message holds the refresh URL.
    try:
        requests.get(
            f"http://127.0.0.1:{closed_port()}/oauth/token/",
            params={
                "client_secret": app.config["B24_CLIENT_SECRET"],
                "refresh_token": renewed.refresh_token,
            },
            timeout=5,
        )
    except requests.ConnectionError:
        logging.getLogger("b24app.tests").exception("The OAuth server could not be reached")

    # The operator opens the admin page through the link, whose token reads every portal's log.
    with app.app_context():
        link = operator_link(1)
    secret_values |= {parse_qs(urlsplit(link).query)["token"][0]}
    assert requests.get(link.replace(app.config["PUBLIC_URL"], server.public_url), timeout=10).ok

    output = stream.getvalue()
    secret_values.discard(None)
    assert len(secret_values) >= 15
    leaked = sorted(value for value in secret_values if value in output)
    assert leaked == []
    # The lines that carried them were written, masked: by the sandbox's request log, urllib3
    # and the app, through the app's formatter.
    for line in (
        "POST /install",
        "GET /admin/operator?token=[hidden]",
        "/oauth-server/oauth/token/?grant_type=refresh_token",
        "client_secret=[hidden]&refresh_token=[hidden]",
        "/oauth-server/rest/app.info?auth=[hidden]",
        f"Portal {member_id}: token refresh refused, needs_reauth: invalid_grant",
        "Traceback (most recent call last)",
        "Max retries exceeded with url: /oauth/token/?client_secret=[hidden]&refresh_token=",
    ):
        assert line in output, line
    # urllib3's records themselves held the secrets: only the formatter kept them out.
    unmasked = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("urllib3"))
    assert app.config["B24_CLIENT_SECRET"] in unmasked
