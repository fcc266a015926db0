"""Masking of tokens and secrets in text that may reach a log line or an error message."""

import re

# Parameters that carry tokens, secrets or private channel ids in the protocol's URLs and forms.
SECRET_PARAMETERS = re.compile(
    r"((?:auth|access_token|refresh_token|client_secret|AUTH_ID|REFRESH_ID|CHANNEL_ID)=)"
    r"[^&\s\"]+"
)


def mask(text):
    """Return ``text`` with the values of secret parameters replaced by ``[hidden]``."""
    return SECRET_PARAMETERS.sub(r"\1[hidden]", text)
