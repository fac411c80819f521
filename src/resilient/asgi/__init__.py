"""ASGI integration: ``ResilienceMiddleware`` protects a Starlette, FastAPI or any ASGI service.

Importing this module does not import Starlette; the middleware is pure ASGI::

    from resilient.asgi import ResilienceMiddleware

    app.add_middleware(ResilienceMiddleware, max_concurrent=100, rate=200.0, timeout=5.0)
"""

from __future__ import annotations

from ._client import NO_PEER_KEY, ClientKeyResolver
from ._guard import Message, Receive, Scope, Send
from ._middleware import DEFAULT_EXCLUDE, ASGIApp, ResilienceMiddleware

__all__ = [
    "DEFAULT_EXCLUDE",
    "NO_PEER_KEY",
    "ASGIApp",
    "ClientKeyResolver",
    "Message",
    "Receive",
    "ResilienceMiddleware",
    "Scope",
    "Send",
]
