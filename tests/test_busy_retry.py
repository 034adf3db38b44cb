"""The server-side replay of 503s (`dvcflow.server.busy_retry`), on a Starlette app shaped like Prefect's: the
API mounted under /api, an exception handler that answers 503 for a locked database and re-raises."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from dvcflow.server.busy_retry import RetryBusyDatabase

PAUSES = (0.0, 0.0, 0.0)


def prefect_shaped(failures: int) -> tuple[Starlette, list[bytes]]:
    """An app whose POST /api/flow_runs/ fails `failures` times with a locked database, then echoes."""
    bodies: list[bytes] = []

    async def create(request: Request) -> Response:
        bodies.append(await request.body())
        if len(bodies) <= failures:
            raise sqlite3.OperationalError("database is locked")
        return JSONResponse({"echo": bodies[-1].decode(), "attempt": len(bodies)}, status_code=201)

    async def retryable(_request: Request, _exc: Exception) -> Response:
        return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)

    api = Starlette(routes=[Route("/flow_runs/", create, methods=["POST"])])
    api.add_exception_handler(Exception, retryable)
    return Starlette(routes=[Mount("/api", app=api)]), bodies


def post(app: RetryBusyDatabase, path: str = "/api/flow_runs/") -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, content=b'{"name": "run"}')

    return asyncio.run(call())


def test_a_locked_database_is_replayed_with_the_same_body_until_it_answers() -> None:
    app, bodies = prefect_shaped(failures=2)
    response = post(RetryBusyDatabase(app, pauses=PAUSES))
    assert response.status_code == 201
    assert response.json() == {"echo": '{"name": "run"}', "attempt": 3}
    assert bodies == [b'{"name": "run"}'] * 3  # routing still finds the mounted route on a replay


def test_the_last_503_reaches_the_client_after_a_bounded_number_of_attempts() -> None:
    app, bodies = prefect_shaped(failures=100)
    response = post(RetryBusyDatabase(app, pauses=PAUSES))
    assert response.status_code == 503
    assert response.json() == {"exception_message": "Service Unavailable"}
    assert len(bodies) == len(PAUSES) + 1


def test_without_the_middleware_the_client_sees_the_503_itself() -> None:
    app, bodies = prefect_shaped(failures=1)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/api/flow_runs/", content=b"{}")

    assert asyncio.run(call()).status_code == 503
    assert len(bodies) == 1


def test_other_answers_and_paths_pass_through_once() -> None:
    app, bodies = prefect_shaped(failures=0)
    assert post(RetryBusyDatabase(app, pauses=PAUSES)).status_code == 201
    assert len(bodies) == 1
    assert post(RetryBusyDatabase(app, pauses=PAUSES), "/api/nothing").status_code == 404
    failing, failed_bodies = prefect_shaped(failures=1)
    # outside the prefix nothing is replayed: the UI's routes, for instance
    response = post(RetryBusyDatabase(failing, prefix="/ui/", pauses=PAUSES))
    assert response.status_code == 503
    assert len(failed_bodies) == 1


def test_a_deliberate_not_ready_is_answered_at_once() -> None:
    calls: list[str] = []

    async def ready(_request: Request) -> Response:
        calls.append("ready")
        return JSONResponse({"message": "database not ready"}, status_code=503)

    api = Starlette(routes=[Route("/ready", ready)])
    app = RetryBusyDatabase(Starlette(routes=[Mount("/api", app=api)]), pauses=PAUSES)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/api/ready")

    assert asyncio.run(call()).status_code == 503
    assert calls == ["ready"]
