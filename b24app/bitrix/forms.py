"""Bitrix24's form encoding: nested data as PHP-style bracketed keys (``auth[member_id]=…``).

Portals post events this way, and batch commands carry their parameters this way. All values
arrive as strings.
"""

import re
from urllib.parse import parse_qsl, urlencode

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


class FormError(ValueError):
    """A bracketed key is malformed or contradicts another key."""


def unflatten(pairs):
    """Return the nested dict that the bracketed ``(key, value)`` pairs describe.

    ``a[]=x`` appends to a list; ``a[0]=x`` is a dict key ``"0"``, as PHP's ``parse_str`` would
    read it (a PHP array with integer keys), which is what portals send.

    :raise FormError: when a key is malformed or one key is both a value and a container.
    """
    result = {}
    for key, value in pairs:
        match = _KEY.match(key)
        if not match:
            raise FormError(f"Malformed field name {key!r}.")
        path = [match.group(1)] + re.findall(r"\[([^\[\]]*)\]", match.group(2))
        node = result
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                if part != "":
                    raise FormError(f"Field {key!r} mixes list and keyed items.")
                if last:
                    node.append(value)
                else:
                    child = [] if path[depth + 1] == "" else {}
                    node.append(child)
                    node = child
                continue
            if last:
                if part in node and isinstance(node[part], dict | list):
                    raise FormError(f"Field {key!r} is also used as a container.")
                node[part] = value
                continue
            wanted = list if path[depth + 1] == "" else dict
            child = node.setdefault(part, wanted())
            if not isinstance(child, wanted):
                raise FormError(f"Field {key!r} conflicts with another field of the same name.")
            node = child
    return result


def parse_query(query):
    """Return the nested dict encoded in a bracketed query string (``a[b]=1&c=2``)."""
    return unflatten(parse_qsl(query, keep_blank_values=True))


def flatten(data, prefix=""):
    """Return ``data`` (a nested dict or list) as bracketed ``(key, value)`` pairs of strings."""
    pairs = []
    items = data.items() if isinstance(data, dict) else enumerate(data)
    for key, value in items:
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, dict | list | tuple):
            pairs.extend(flatten(value, name))
        elif value is None:
            pairs.append((name, ""))
        elif isinstance(value, bool):
            pairs.append((name, "1" if value else "0"))
        else:
            pairs.append((name, str(value)))
    return pairs


def encode(data):
    """Return ``data`` form-encoded with bracketed keys, as a portal posts it."""
    return urlencode(flatten(data))
