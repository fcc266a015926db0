import pytest

from b24app.bitrix.frame import HandshakeError, parse_frame_request

QUERY = {"DOMAIN": "portal.bitrix24.com", "PROTOCOL": "1", "LANG": "en", "APP_SID": "sid1"}
FORM = {
    "AUTH_ID": "access1",
    "AUTH_EXPIRES": "3600",
    "REFRESH_ID": "refresh1",
    "member_id": "a223c6b3710f85df22e9377d6c4f7553",
    "status": "L",
    "PLACEMENT": "DEFAULT",
}


def parse(query_changes=None, form_changes=None):
    query = {**QUERY, **(query_changes or {})}
    form = {**FORM, **(form_changes or {})}
    return parse_frame_request(
        {k: v for k, v in query.items() if v is not None},
        {k: v for k, v in form.items() if v is not None},
    )


def test_parse_reads_every_field():
    frame = parse(
        form_changes={
            "PLACEMENT": "CRM_DEAL_DETAIL_TAB",
            "PLACEMENT_OPTIONS": '{"ID":"8061"}',
            "SERVER_ENDPOINT": "https://oauth.bitrix.info/rest/",
            "APPLICATION_SCOPE": "crm,pull",
        }
    )
    assert frame.domain == "portal.bitrix24.com"
    assert frame.protocol == 1
    assert frame.auth_id == "access1"
    assert frame.auth_expires == 3600
    assert frame.refresh_id == "refresh1"
    assert frame.member_id == "a223c6b3710f85df22e9377d6c4f7553"
    assert frame.placement == "CRM_DEAL_DETAIL_TAB"
    assert frame.placement_options == {"ID": "8061"}
    assert frame.client_endpoint == "https://portal.bitrix24.com/rest/"
    assert frame.portal_origin == "https://portal.bitrix24.com"


def test_tokens_stay_out_of_the_repr():
    assert "access1" not in repr(parse())
    assert "refresh1" not in repr(parse())


@pytest.mark.parametrize(
    ("query_changes", "expected"),
    [
        ({"DOMAIN": "localhost:8090", "PROTOCOL": "0"}, "http://localhost:8090"),
        ({"DOMAIN": "portal.example.com:443"}, "https://portal.example.com"),
        ({"DOMAIN": "Portal.Example.com"}, "https://portal.example.com"),
    ],
)
def test_portal_origin_follows_domain_and_protocol(query_changes, expected):
    assert parse(query_changes).portal_origin == expected


@pytest.mark.parametrize("raw", [None, "", "undefined", "[1,2]", '"text"', "{broken"])
def test_placement_options_that_are_not_an_object_mean_none(raw):
    assert parse(form_changes={"PLACEMENT_OPTIONS": raw}).placement_options == {}


@pytest.mark.parametrize(
    ("query_changes", "form_changes", "message"),
    [
        ({"DOMAIN": None}, None, "The frame request lacks DOMAIN."),
        (None, {"AUTH_ID": None}, "The frame request lacks AUTH_ID."),
        (None, {"REFRESH_ID": ""}, "The frame request lacks REFRESH_ID."),
        (None, {"member_id": None}, "The frame request lacks member_id."),
        ({"DOMAIN": "evil.com/path"}, None, "DOMAIN is not a host name."),
        (None, {"member_id": "a b"}, "member_id is malformed."),
        (None, {"AUTH_ID": "tok en"}, "AUTH_ID is malformed."),
        (None, {"AUTH_EXPIRES": "soon"}, "AUTH_EXPIRES must be a number of seconds."),
        (None, {"AUTH_EXPIRES": "0"}, "AUTH_EXPIRES must be between 1 and 86400 seconds."),
        ({"PROTOCOL": "2"}, None, "PROTOCOL must be 0 or 1."),
        (None, {"PLACEMENT": "<script>"}, "PLACEMENT is malformed."),
    ],
)
def test_parse_names_the_bad_field(query_changes, form_changes, message):
    with pytest.raises(HandshakeError) as error:
        parse(query_changes, form_changes)
    assert error.value.status == 400
    assert error.value.message == message
