"""Replay, inside the server, an API request that a busy SQLite database turned into a 503.

Prefect's SQLite transactions begin DEFERRED: one that read before writing fails at once ("database is
locked", no busy wait) when another connection committed in between, typically the server's own event
persister or task-run recorder storing the previous run's events. Prefect answers 503 and its client
retries the same request after 2 s (then 4, 8 ...): measured, one no-op `run-a` in two right after a
`run-b` of 50 stages took 4.4 s instead of 2.2 s (10 of 12 tries). Replaying the request here after a
few milliseconds is what the client would do, sooner: the failed transaction was rolled back. Only on
SQLite (`server.process.serve`): on PostgreSQL a 503 may follow a connection lost during a commit, where
that does not hold. `/api/ready` answers 503 on purpose and is passed through.

Only the response's start is held back (to see its status); a response that is not a 503 streams on as
before. Bounded: the last attempt's answer, 503 or not, goes to the client (its own back-off applies).
Standard library only; pure ASGI, so it wraps Prefect's app without touching it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

PAUSES_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)  # ~0.8 s of replays at most, then the client's 2 s
SERVICE_UNAVAILABLE = 503
DELIBERATE_503 = frozenset({"/api/ready"})  # "not ready" is an answer, not a failure to retry


class RetryBusyDatabase:
    """ASGI middleware: HTTP requests under `prefix` answered 503 are replayed after a short pause."""

    def __init__(
        self,
        app: App,
        prefix: str = "/api/",
        pauses: tuple[float, ...] = PAUSES_S,
        deliberate: frozenset[str] = DELIBERATE_503,
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.pauses = pauses
        self.deliberate = deliberate

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not path.startswith(self.prefix) or path.rstrip("/") in self.deliberate:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client left before sending it all
            return
        for pause in self.pauses:  # each attempt on a copy of the scope: routing rewrites its path
            attempt = _Attempt(send)
            try:
                await self.app(dict(scope), _replayed(body, receive), attempt.send)
            except Exception:
                if not attempt.dropped:
                    raise
                # Prefect re-raises the database error after its 503 reply: it was dropped with it
            if not attempt.dropped:
                return
            await asyncio.sleep(pause)
        await self.app(dict(scope), _replayed(body, receive), send)  # the last answer, whatever it is


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replayed(body: bytes, receive: Receive) -> Receive:
    """The request body once, then what the connection says (a disconnect), as a first attempt sees."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _Attempt:
    """Passes an attempt's response on, unless it is a 503: that one is dropped, message by message."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.dropped = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message.get("status") == SERVICE_UNAVAILABLE:
            self.dropped = True
        if not self.dropped:
            await self._send(message)
