"""JSON from outside the app, parsed so that whatever the app cannot hold is a ``ValueError``.

Python's parser takes text that the rest of the app cannot: arrays nested deeper than the
interpreter's recursion limit (a ``RecursionError``) and strings with lone surrogates such as
``"\\ud800"``, which no UTF-8 encoder, signer or database takes. Both are refused here as any
malformed JSON is, so that callers need handle one error only.
"""

import json

from flask.json.provider import DefaultJSONProvider


def loads(text):
    """Return the value of the JSON ``text``.

    :raise ValueError: when ``text`` is not JSON, or JSON the app cannot hold.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("The JSON is nested too deeply.") from None
    # Encoding it again finds lone surrogates anywhere in it (UnicodeEncodeError, a ValueError).
    json.dumps(value, ensure_ascii=False).encode()
    return value


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, with request bodies parsed by :func:`loads`."""

    def loads(self, s, **kwargs):
        return loads(s)
