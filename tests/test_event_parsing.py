"""Reading a portal's event body (bracketed form fields, all strings) into a PortalEvent."""

import time

import pytest

from b24app.bitrix.events import EventError, parse_event

# An ONAPPINSTALL as a portal posts it, field by field.
INSTALL_FIELDS = {
    "event": "ONAPPINSTALL",
    "event_handler_id": "58",
    "data[VERSION]": "1",
    "data[ACTIVE]": "Y",
    "data[INSTALLED]": "Y",
    "data[LANGUAGE_ID]": "en",
    "ts": "1727018926",
    "auth[access_token]": "s6p6eclrvim6da22ft9ch94ekreb52lv",
    "auth[expires]": "1727022526",
    "auth[expires_in]": "3600",
    "auth[scope]": "pull",
    "auth[domain]": "Portal.Bitrix24.com",
    "auth[server_endpoint]": "https://oauth.bitrix.info/rest/",
    "auth[status]": "L",
    "auth[client_endpoint]": "https://portal.bitrix24.com/rest/",
    "auth[member_id]": "010b6886ebc205e43ae65000ee00addb",
    "auth[user_id]": "1",
    "auth[refresh_token]": "4s386p3q0tr8dy89xvmt96hzdxb1jm8g",
    "auth[application_token]": "51856fefc120afa4b628cc82d3935cce",
}


def parse(fields):
    return parse_event(fields.items())


def test_an_install_event_is_read_into_typed_fields():
    event = parse(INSTALL_FIELDS)

    assert (event.name, event.handler_id, event.ts) == ("ONAPPINSTALL", 58, 1727018926)
    assert event.data == {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"}
    auth = event.auth
    assert (auth.member_id, auth.domain, auth.user_id) == (
        "010b6886ebc205e43ae65000ee00addb",
        "portal.bitrix24.com",
        1,
    )
    assert (auth.access_token, auth.refresh_token, auth.expires) == (
        "s6p6eclrvim6da22ft9ch94ekreb52lv",
        "4s386p3q0tr8dy89xvmt96hzdxb1jm8g",
        1727022526,
    )
    assert auth.application_token == "51856fefc120afa4b628cc82d3935cce"
    assert (auth.client_endpoint, auth.server_endpoint, auth.scope, auth.status) == (
        "https://portal.bitrix24.com/rest/",
        "https://oauth.bitrix.info/rest/",
        "pull",
        "L",
    )


def test_tokens_are_left_out_of_the_events_repr():
    text = repr(parse(INSTALL_FIELDS))

    for name in ("auth[access_token]", "auth[refresh_token]", "auth[application_token]"):
        assert INSTALL_FIELDS[name] not in text


def test_an_uninstall_event_carries_no_tokens_and_may_ask_for_a_clean_removal():
    event = parse(
        {
            "event": "onAppUninstall",
            "data[CLEAN]": "1",
            "auth[member_id]": "m" * 32,
            "auth[application_token]": "t",
        }
    )

    assert (event.name, event.clean) == ("ONAPPUNINSTALL", True)
    assert (event.auth.access_token, event.auth.refresh_token, event.auth.expires) == (
        "",
        "",
        None,
    )
    assert (event.handler_id, event.ts, event.auth.user_id) == (None, None, None)
    assert parse({**INSTALL_FIELDS, "data[CLEAN]": "0"}).clean is False
    assert parse(INSTALL_FIELDS).clean is False


def test_without_expires_a_token_expires_expires_in_seconds_from_now():
    fields = {k: v for k, v in INSTALL_FIELDS.items() if k != "auth[expires]"}

    before = int(time.time())
    expires = parse(fields).auth.expires

    assert before + 3600 <= expires <= int(time.time()) + 3600


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"auth]": "x"}, "Malformed field name 'auth]'."),
        ({"event": ""}, "An event needs event and auth[member_id]."),
        ({"auth[member_id]": ""}, "An event needs event and auth[member_id]."),
        ({"auth[member_id]": "a\nb"}, "The event's name or auth[member_id] is malformed."),
        ({"event": "ON APP"}, "The event's name or auth[member_id] is malformed."),
        ({"auth[domain]": "evil.example/path"}, "auth[domain] is not a host name."),
        ({"auth[access_token]": "a b"}, "auth[access_token] is malformed."),
        ({"auth[refresh_token]": "x" * 513}, "auth[refresh_token] is malformed."),
        ({"event_handler_id": "58a"}, "event_handler_id is not a whole number."),
        ({"ts": "-1"}, "ts is not a whole number."),
        ({"auth[expires]": "soon"}, "auth[expires] is not a whole number."),
        ({"auth[user_id]": "1.5"}, "auth[user_id] is not a whole number."),
    ],
)
def test_a_malformed_event_is_refused_naming_the_field(changes, message):
    with pytest.raises(EventError) as error:
        parse({**INSTALL_FIELDS, **changes})

    assert str(error.value) == message


def test_an_auth_that_is_not_a_group_of_fields_names_no_portal():
    fields = {"event": "ONAPPTEST", "auth": "member_id"}

    with pytest.raises(EventError, match=r"An event needs event and auth\[member_id\]\."):
        parse(fields)
