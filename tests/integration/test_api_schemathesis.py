"""Schemathesis against /v1/openapi.json of a live server with data in it: no 5xx,
every response conforms to the document, invalid input is rejected. Bounded:
a fixed number of examples per operation and a deadline for the whole run."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from tests.integration.test_api_defects import finished
from tests.integration.test_api_support import (
    ADMIN,
    ALICE_ID,
    Api,
    api,  # noqa: F401 - fixture
    project,
    run_stages,
    script,
)
from tracker.statuses import DEFAULT_STAGES

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 10}
BUDGET_SECONDS = 60.0
#: Not plain HTTP API operations: the WebSocket upgrade and the dashboard's files.
NOT_FUZZED = r"^/(v1/dashboard/ws|static/|$)"


async def test_schemathesis_finds_no_error_and_no_schema_violation(api: Api, pg_pool: asyncpg.Pool) -> None:
    running = script(120, trigger_source="user", user_id=ALICE_ID, genres=["tech"])
    run_stages(running, DEFAULT_STAGES[:3])
    running.emit("genre.status", genre="tech", status="partial", phase="clustering", cluster_count=2)
    await project(pg_pool, running, finished("recap", "completed"), finished("morning", "failed"))

    started = time.monotonic()
    ran = await asyncio.to_thread(fuzz, api.base_url, started + BUDGET_SECONDS)
    assert ran >= 8, f"only {ran} operations were exercised"
    assert time.monotonic() - started < BUDGET_SECONDS + 10


def fuzz(base_url: str, deadline: float) -> int:
    """Run every operation in both modes; raises on the first failing check. Returns how many ran."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json", headers=headers)
    session = requests.Session()
    ran = 0
    for result in schema.exclude(path_regex=NOT_FUZZED).get_all_operations():
        operation = result.ok()
        has_parameters = bool(len(operation.query) or len(operation.path_parameters))
        for mode, examples in EXAMPLES.items():
            if mode is GenerationMode.NEGATIVE and not has_parameters:
                continue  # nothing to make invalid
            if time.monotonic() > deadline:
                raise AssertionError("schemathesis ran out of its time budget")

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=base_url, session=session, headers=headers, timeout=10)

            check()
        ran += 1
    return ran
