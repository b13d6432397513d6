"""The MLLP connections: the client (`client.py`: the service dials the hospital), the listener
(`listener.py`: an integration engine dials the service) and their TLS (`tls.py`). Both hand
every frame to the same `on_frame` (the front's: log, hand over, ACK), so there is one ingest
path whichever side opens the connection."""

from .client import (CONNECT_FAILED, CONNECT_TIMEOUT, CONNECTED, DISCONNECTED,
                     NOT_ACKNOWLEDGED, RECONNECT_CAP, RECONNECT_FIRST, TLS_HANDSHAKE_FAILED,
                     FrameHandler, MllpClient, reconnect_delay)
from .listener import (LISTENER_ACCEPTED, LISTENER_CLOSED, LISTENER_EVICTED,
                       LISTENER_TIMED_OUT, MllpListener, bind)

__all__ = [
    "CONNECT_FAILED", "CONNECT_TIMEOUT", "CONNECTED", "DISCONNECTED", "NOT_ACKNOWLEDGED",
    "RECONNECT_CAP", "RECONNECT_FIRST", "TLS_HANDSHAKE_FAILED", "FrameHandler", "MllpClient",
    "reconnect_delay", "LISTENER_ACCEPTED", "LISTENER_CLOSED", "LISTENER_EVICTED",
    "LISTENER_TIMED_OUT", "MllpListener", "bind",
]
