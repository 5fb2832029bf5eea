"""Errors (400 naming the parameter, 401, 403, 404, 405, 503), health probes,
metrics and the OpenAPI document against the routes."""

from __future__ import annotations

import importlib.util
import uuid

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_api_support import (
    ADMIN,
    ALICE,
    ALICE_ID,
    METRICS,
    Api,
    QueryCounter,
    api,  # noqa: F401 - fixture
    api_settings,
    project,
    script,
    serve,
)
from tracker import events as ev
from tracker.consumer import GROUP
from tracker.settings import Settings
from web.app import create_app
from web.keys import POOL, REDIS
from web.openapi import OPERATIONS, STATIC_PATH, build_document, registered_operations

PROGRESS = "/v1/dashboard/job-progress"

BAD_PARAMETERS = [
    (PROGRESS, {"user_id": "42"}, "user_id"),
    (PROGRESS, {"user_id": ""}, "user_id"),
    (PROGRESS, {"limit": ["10", "20"]}, "limit"),
    (PROGRESS, {"limit": "-1"}, "limit"),
    (PROGRESS, {"limit": "0"}, "limit"),
    (PROGRESS, {"limit": "100000"}, "limit"),
    (PROGRESS, {"limit": "1e3"}, "limit"),
    (PROGRESS, {"limit": "99999999999999999999999999"}, "limit"),
    (PROGRESS, {"window": "0"}, "window"),
    (PROGRESS, {"window": "-3600"}, "window"),
    (PROGRESS, {"window": "1.5"}, "window"),
    (PROGRESS, {"kind": "nightly"}, "kind"),
    (PROGRESS, {"status": "done"}, "status"),
    (PROGRESS, {"trigger_source": "cron"}, "trigger_source"),
    ("/v1/dashboard/job-stats", {"kind": "Recap"}, "kind"),
    ("/v1/dashboard/job-stats", {"window": "x"}, "window"),
    ("/v1/dashboard/job-stats", {"user_id": "not-a-uuid"}, "user_id"),
    ("/v1/dashboard/jobs/not-a-uuid", {}, "job_id"),
    (f"/v1/dashboard/jobs/{uuid.uuid4()}", {"events": "-1"}, "events"),
    ("/v1/dashboard/dead-letters", {"limit": "501"}, "limit"),
]


@pytest.mark.parametrize(("path", "query", "parameter"), BAD_PARAMETERS)
async def test_bad_parameter_is_a_400_naming_it(api: Api, path: str, query: dict, parameter: str) -> None:
    status, body = await api.get(path, **query)
    assert status == 400
    assert body["error"]["code"] == "bad_parameter"
    assert body["error"]["parameter"] == parameter
    assert body["error"]["message"].startswith(f"{parameter}: must be")


async def test_unknown_job_route_and_method_are_json(api: Api) -> None:
    status, body = await api.get(f"/v1/dashboard/jobs/{uuid.uuid4()}")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await api.get("/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
    async with api.client.post(PROGRESS, headers={"Authorization": f"Bearer {ADMIN}"}) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET,HEAD"
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_401_and_403_are_json(api: Api) -> None:
    async with api.client.get(PROGRESS) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.content_type == "application/json"
        assert (await response.json()) == {"error": {"code": "unauthorized", "message": "a bearer token is required"}}
    async with api.client.get(PROGRESS, headers={"Authorization": "Basic YWRtaW46YWRtaW4="}) as response:
        assert response.status == 401
    status, body = await api.get("/v1/dashboard/dead-letters", token=ALICE)
    assert status == 403 and body["error"]["code"] == "forbidden"


async def test_503_when_postgres_is_down(settings: Settings) -> None:
    down = api_settings(settings, database_url="postgresql://postgres@127.0.0.1:1/nothing")
    unavailable = {"code": "unavailable", "message": "the database or Redis is unavailable; try again shortly"}
    async for no_db in serve(down):
        for path in (PROGRESS, "/v1/dashboard/job-stats", f"/v1/dashboard/jobs/{uuid.uuid4()}"):
            status, body = await no_db.get(path)
            assert (status, body) == (503, {"error": unavailable}), path
        status, body = await no_db.get("/health/ready", token=None)
        assert status == 503
        assert body["checks"] == {"postgres": "unreachable", "migrations": "unreachable", "redis": "ok"}
        assert body["error"]["code"] == "not_ready"
        assert (await no_db.get("/health/live", token=None))[0] == 200
        assert (await no_db.get("/metrics", token=METRICS))[0] == 200  # still scrapable


async def test_503_when_the_pool_is_terminated_under_the_server(api: Api, pg_pool: asyncpg.Pool) -> None:
    await project(pg_pool, script(60))
    assert (await api.get(PROGRESS))[0] == 200
    api.client.server.app[POOL].terminate()
    status, body = await api.get(PROGRESS)
    assert status == 503 and body["error"]["code"] == "unavailable"


async def test_ready_when_everything_answers(api: Api, pg_pool: asyncpg.Pool, settings: Settings) -> None:
    status, body = await api.get("/health/ready", token=None)
    assert (status, body) == (200, {"status": "ready", "checks": {"postgres": "ok", "migrations": "ok", "redis": "ok"}})

    async with pg_pool.acquire() as conn:
        await conn.execute("DELETE FROM schema_migrations WHERE filename = '0001_initial.sql'")
    status, body = await api.get("/health/ready", token=None)
    assert status == 503 and body["checks"]["migrations"] == "pending: 0001_initial.sql"

    client = api.client.server.app[REDIS]  # Redis goes away under the running server
    client.connection_pool.connection_kwargs["port"] = 1
    await client.connection_pool.disconnect()
    client.connection_pool.reset()
    status, body = await api.get("/health/ready", token=None)
    assert status == 503 and body["checks"]["redis"] == "unreachable"


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics(api: Api, pg_pool: asyncpg.Pool, settings: Settings, redis: aioredis.Redis) -> None:
    job = script(60)
    await project(pg_pool, job)
    async with pg_pool.acquire() as conn:
        await conn.execute("INSERT INTO recap_dead_letters (stream_id, reason) VALUES ('1-0', 'bad'), ('2-0', 'bad')")
    await redis.xgroup_create(settings.events_stream, GROUP, id="0", mkstream=True)
    for _ in range(3):
        await redis.xadd(settings.events_stream, {ev.EVENT_FIELD: b"{}"})
    await api.ok(PROGRESS)
    await api.get(f"/v1/dashboard/jobs/{job.job_id}")
    await api.get(f"/v1/dashboard/jobs/{uuid.uuid4()}")

    async with api.client.get("/metrics", headers={"Authorization": f"Bearer {METRICS}"}) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        samples = _samples(await response.text())
    route = "/v1/dashboard/jobs/{job_id}"
    assert samples[("recap_http_requests_total", (("method", "GET"), ("route", route), ("status", "200")))] == 1
    assert samples[("recap_http_requests_total", (("method", "GET"), ("route", route), ("status", "404")))] == 1
    assert samples[("recap_http_request_duration_seconds_count", (("route", PROGRESS),))] == 1
    assert samples[("recap_tracker_lag", ())] == 3
    assert samples[("recap_dead_letters", ())] == 2
    assert samples[("recap_events_projected", ())] == 1
    assert samples[("recap_jobs", (("status", "running"),))] == 1


def test_every_route_is_documented_and_every_document_path_is_a_route(settings: Settings) -> None:
    app = create_app(api_settings(settings))
    registered = registered_operations(app)
    document = msgspec.json.decode(msgspec.json.encode(build_document(app)))
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert registered == documented
    described = set(OPERATIONS)
    if importlib.util.find_spec("web.ws") is None:
        described.discard("/v1/dashboard/ws")
    assert {path for _, path in registered} == described  # nothing described that does not exist
    assert STATIC_PATH in document["paths"]


async def test_openapi_document_is_served(api: Api) -> None:
    document = await api.ok("/v1/openapi.json")
    assert document["openapi"].startswith("3.1")
    assert "/v1/dashboard/job-progress" in document["paths"]
    assert (await api.get("/v1/openapi.json", token=None))[0] == 401


async def test_many_apps_have_their_own_metrics(settings: Settings) -> None:
    first, second = create_app(api_settings(settings)), create_app(api_settings(settings))
    async with TestClient(TestServer(first)) as one, TestClient(TestServer(second)) as two:
        await one.get("/health/live")
        async with two.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as response:
            assert "health/live" not in await response.text()


async def test_poll_cache_shares_answers_within_a_scope_only(settings: Settings, pg_pool: asyncpg.Pool) -> None:
    alices = script(300, user_id=ALICE_ID)
    await project(pg_pool, alices, script(200))
    async for cached in serve(api_settings(settings, poll_cache_ms=60_000)):
        first = await cached.ok(PROGRESS)
        await project(pg_pool, script(100))
        with QueryCounter(cached.client.server.app[POOL]) as counter:
            again = await cached.ok(PROGRESS)
        assert again == first and counter.queries == []  # the same view within the TTL: no query
        assert len((await cached.ok(PROGRESS, limit=10))["recent_jobs"]) == 3  # other parameters: computed
        mine = await cached.ok(PROGRESS, token=ALICE)  # another scope never gets the admin's answer
        assert [j["job_id"] for j in mine["recent_jobs"]] == [str(alices.job_id)]
        other = str(uuid.uuid4())
        assert (await cached.get(PROGRESS, token=ALICE, user_id=other))[0] == 403  # checked before the cache
        assert (await cached.ok(PROGRESS, user_id=str(ALICE_ID)))["recent_jobs"] == mine["recent_jobs"]


async def test_dashboard_files_are_public_and_confined_to_the_static_folder(api: Api) -> None:
    for path in ("/", "/static/index.html"):
        async with api.client.get(path) as response:
            assert (response.status, response.content_type) == (200, "text/html")
    for path in ("/static/nothing.js", "/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py"):
        status, body = await api.get(path, token=None)
        assert status == 404 and body["error"]["code"] == "not_found", path
