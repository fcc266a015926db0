"""The sandbox's push server at ``/subws/``: JSON-RPC over WebSocket, protocol version 5.

A client connects with ``CHANNEL_ID=<private>/<shared>`` (plus the SDK's other query
parameters, which are ignored) and receives every ``pull.application.event.add`` for those
channels as an ``incoming.message`` text frame. The server never pings and never closes a healthy
socket; acknowledgements (``mack:<mid>``) and ``pong`` frames are read and dropped.
"""

import logging
import queue
import time

from flask import current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from b24app.sandbox.state import SandboxError

log = logging.getLogger(__name__)

# Close code that makes the client fetch a new config and reconnect.
WRONG_CHANNEL_ID = 4010
# How long a socket's thread waits for an outgoing message before reading incoming frames.
POLL_INTERVAL = 0.2
CLOSE_GRACE = 0.5

sock = Sock()


def init_app(portal_app):
    """Serve the push server from the portal app."""
    sock.init_app(portal_app)


@sock.route("/subws/")
def subscribe(ws):
    """Relay the messages of the requested channels to one socket until it closes.

    flask-sock runs each socket in its own request thread (one per connection under werkzeug's
    threaded server); publishers only put frames on this socket's queue, and this thread alone
    writes to the socket.
    """
    state = current_app.extensions["sandbox"]
    channel_ids = [part for part in request.args.get("CHANNEL_ID", "").split("/") if part]
    try:
        subscriber = state.subscribe(channel_ids)
    except SandboxError:
        log.info("Push socket refused: unknown or expired channel")
        ws.close(reason=WRONG_CHANNEL_ID, message="Wrong channel id")
        # Closing the TCP connection at once can reset it before the client has read the close
        # frame, and the client would then see 1005 instead of 4010; give it a moment.
        time.sleep(CLOSE_GRACE)
        return

    log.info("Push socket opened for portal %s", subscriber.member_id)
    try:
        while ws.connected:
            try:
                frame = subscriber.outbox.get(timeout=POLL_INTERVAL)
            except queue.Empty:
                frame = None
            if frame is not None:
                ws.send(frame)
            # Acknowledgements and pongs need no answer; read them so they do not pile up.
            while ws.receive(timeout=0) is not None:
                pass
    except ConnectionClosed:
        pass
    finally:
        state.unsubscribe(subscriber)
        log.info("Push socket closed for portal %s", subscriber.member_id)
