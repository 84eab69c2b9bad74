"""What the parallax kernel runs in its local kernel for `%%px --out NAME`.

The kernel sends the engines their requests itself (from Rust); `--out NAME` then runs, in the
local kernel, `NAME = parallax._kernel.result(profile, msg_ids)`: an AsyncResult of those
requests, fetched from the controller's task database (so it works for a blocking cell, whose
tasks are done, and a `--noblock` one, whose `get()` waits). One client per profile is kept for
the life of the local kernel.
"""

from __future__ import annotations

import threading
from typing import Any

_clients: dict[str, Any] = {}
_lock = threading.Lock()


def result(profile: str, msg_ids: list[str]) -> Any:
    """The AsyncResult of the requests `msg_ids` sent to the cluster of `profile`."""
    from .client import Client

    with _lock:
        client = _clients.get(profile)
        if client is None or getattr(client, "_closed", False):
            client = _clients[profile] = Client(profile=profile)
    return client.get_result(list(msg_ids), block=False)
