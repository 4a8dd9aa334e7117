"""Calling an ASGI app (the guard and what is behind it) in-process, without a server:
a stand-in endpoint that records what the guard handed on, and one request in, one answer out."""

from __future__ import annotations

import asyncio


class Recorder:
    """A stand-in for the service: records the scope state it was handed, answers 200."""

    def __init__(self):
        self.states: list[dict] = []

    async def __call__(self, scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        self.states.append(dict(scope.get("state", {})))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


def call(app, path, headers=(), body=b"{}", method="POST"):
    """(response start message, body bytes) of one request to ``app``."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start, body


def bearer(credential: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {credential}".encode())]
