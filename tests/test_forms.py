import pytest

from b24app.bitrix.forms import FormError, encode, flatten, parse_query, unflatten


def test_unflatten_reads_an_event_body():
    body = (
        "event=ONAPPINSTALL&data%5BVERSION%5D=1&data%5BLANGUAGE_ID%5D=en&ts=1696527000"
        "&auth%5Bmember_id%5D=abc&auth%5Bscope%5D=crm%2Cpull"
    )
    assert parse_query(body) == {
        "event": "ONAPPINSTALL",
        "data": {"VERSION": "1", "LANGUAGE_ID": "en"},
        "ts": "1696527000",
        "auth": {"member_id": "abc", "scope": "crm,pull"},
    }


def test_unflatten_reads_lists_and_deep_keys():
    pairs = [("ID[]", "1"), ("ID[]", "2"), ("filter[FIELDS][ID]", "7"), ("a[0]", "x")]
    assert unflatten(pairs) == {
        "ID": ["1", "2"],
        "filter": {"FIELDS": {"ID": "7"}},
        "a": {"0": "x"},
    }


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("a]", "1")], "Malformed field name"),
        ([("[a]", "1")], "Malformed field name"),
        ([("a[b]", "1"), ("a", "2")], "is also used as a container"),
        ([("a", "1"), ("a[b]", "2")], "conflicts with another field"),
        ([("a[]", "1"), ("a[b]", "2")], "conflicts with another field"),
    ],
)
def test_unflatten_refuses_malformed_keys(pairs, message):
    with pytest.raises(FormError, match=message):
        unflatten(pairs)


def test_flatten_and_unflatten_round_trip():
    data = {"event": "ONAPPUNINSTALL", "data": {"CLEAN": 1}, "auth": {"member_id": "m"}}
    assert flatten(data) == [
        ("event", "ONAPPUNINSTALL"),
        ("data[CLEAN]", "1"),
        ("auth[member_id]", "m"),
    ]
    assert parse_query(encode(data)) == {
        "event": "ONAPPUNINSTALL",
        "data": {"CLEAN": "1"},
        "auth": {"member_id": "m"},
    }
