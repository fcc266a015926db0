"""The sandbox portal: a local stand-in for a Bitrix24 portal, its OAuth server and push server."""


def mount(app):
    """Serve the sandbox portal from ``app`` for requests addressed to ``SANDBOX_URL``."""
    # Not handled yet: the sandbox portal is being built.
