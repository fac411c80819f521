"""A real uvicorn server on 127.0.0.1 in a thread, for end-to-end tests of the httpx transport."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serve(app: Any) -> Iterator[int]:
    """Run ``app`` on a free port of 127.0.0.1 for the ``with`` block; yield the port."""
    # uvicorn binds the socket itself (port 0: any free port): a socket handed over with
    # sockets=[...] skips TCP_NODELAY and every response then waits ~40 ms for a delayed ACK.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_level="error",
        access_log=False,
        backlog=512,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = time.monotonic()
    while not server.started:  # setup only: wait for the server thread to listen
        assert thread.is_alive(), "uvicorn failed to start"
        assert time.monotonic() - started < 10.0, "uvicorn did not start"
        time.sleep(0.005)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10.0)
