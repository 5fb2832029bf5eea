"""The live dashboard in a real browser against the real processes (see conftest.py)."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from tracker.events import event_from_fields, new_event_id

from .conftest import ADMIN_TOKEN, ROOT, USER_TOKEN, Page, System

STATIC = ROOT / "web" / "static"
#: docs/screenshots/ is rewritten only when asked (the PNGs change with every run's clock).
UPDATE_SCREENSHOTS = os.environ.get("RECAP_UPDATE_SCREENSHOTS") == "1"
PAGE_BUDGET = 100 * 1024


def _event(type_: str, job_id: uuid.UUID, seq: int, **fields: Any) -> Any:
    return event_from_fields(type_, {
        "event_id": str(new_event_id()), "job_id": str(job_id), "seq": seq,
        "at": datetime.now(timezone.utc).isoformat(), **fields,
    })


async def _live(page: Any) -> None:
    await page.wait_for_selector('#connection[data-mode="live"]', timeout=10_000)


async def _until(read: Any, check: Any, timeout: float = 5.0) -> None:
    """Poll `await read()` until `check(value)` (wait_for_function evaluates a string: the page's CSP forbids it)."""
    deadline = time.monotonic() + timeout
    while not check(value := await read()):
        assert time.monotonic() < deadline, f"still {value!r} after {timeout} s"
        await asyncio.sleep(0.05)


async def _start_job(system: System, genres: list[str]) -> uuid.UUID:
    job = uuid.uuid4()
    await system.emit([
        _event("job.started", job, 0, genres=genres, note="browser test"),
        _event("stage.started", job, 1, stage="fetch", total=200),
        _event("stage.progress", job, 2, stage="fetch", done=50),
        _event("genre.status", job, 3, genre=genres[0], status="running", phase="clustering"),
    ])
    return job


def test_page_weight() -> None:
    files = [p for p in STATIC.rglob("*") if p.suffix in {".html", ".css", ".js"}]
    total = sum(p.stat().st_size for p in files)
    print(f"\npage weight: {total / 1024:.1f} KB uncompressed in {len(files)} files (HTML + CSS + JS)")
    assert total < PAGE_BUDGET


async def test_screenshots_and_first_render(system: System, browser: Any, tmp_path: Any) -> None:
    """Screenshots of the simulated state (into docs/screenshots/ with RECAP_UPDATE_SCREENSHOTS=1),
    and the first render of about 50 jobs."""
    shots_dir = ROOT / "docs" / "screenshots" if UPDATE_SCREENSHOTS else tmp_path
    shots_dir.mkdir(parents=True, exist_ok=True)
    shots = [
        ("dashboard-light.png", {"viewport": {"width": 1440, "height": 2150}, "color_scheme": "light"}),
        ("dashboard-dark.png", {"viewport": {"width": 1440, "height": 2150}, "color_scheme": "dark"}),
        ("dashboard-phone.png", {"viewport": {"width": 390, "height": 2200}, "color_scheme": "light",
                                 "is_mobile": True, "has_touch": True}),
    ]
    for name, options in shots:
        context = await browser.new_context(**options)
        watched = Page(await context.new_page())
        page = watched.page
        await page.goto(system.url())
        await _live(page)
        await page.wait_for_selector(".metric[data-metric=dead]")
        # the latest finished job opened, to show its detail
        row = page.locator('tr.job-row:not([data-status="running"]):not([data-status="stalled"])').first
        await row.locator(".row-toggle").click()
        await page.wait_for_selector(".detail .timeline li")
        await page.evaluate("window.scrollTo(0, 0)")
        await page.wait_for_timeout(400)  # let bar transitions finish
        await page.screenshot(path=str(shots_dir / name))
        await context.close()
        assert watched.errors == []

    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    watched = Page(await context.new_page())
    await watched.page.goto(system.url("window=3d"))
    await _live(watched.page)
    measured = await watched.page.evaluate("""() => ({
        render: performance.getEntriesByName('recap:first-render')[0].duration,
        since_navigation: performance.getEntriesByName('recap:first-data')[0].startTime,
        jobs: document.querySelectorAll('tr.job-row').length,
    })""")
    await context.close()
    print(f"\nfirst render of {measured['jobs']} jobs: {measured['render']:.1f} ms (DOM, style and layout), "
          f"shown {measured['since_navigation']:.0f} ms after navigation start; screenshots in {shots_dir}")
    assert measured["jobs"] >= 50
    assert watched.errors == []


async def test_token_is_taken_once_and_asked_for_when_missing(system: System, page: Page) -> None:
    p = page.page
    response = await p.goto(system.base_url + "/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe" not in policy
    assert response.headers["referrer-policy"] == "no-referrer"  # the first URL may carry ?token=
    await p.wait_for_selector("#login:not([hidden])")
    await p.fill("#token-input", ADMIN_TOKEN)
    await p.press("#token-input", "Enter")
    await _live(p)

    await p.goto(system.url("window=3d"))
    await _live(p)
    assert "token" not in p.url and "window=3d" in p.url
    assert await p.evaluate("sessionStorage.getItem('recap-status.token')") == ADMIN_TOKEN
    await p.reload()  # the stored token, not the address bar, keeps the tab signed in
    await _live(p)


async def test_running_job_and_live_stage_advance(system: System, page: Page) -> None:
    p = page.page
    job = await _start_job(system, ["tech", "world"])
    await p.goto(system.url())
    await _live(p)
    card = p.locator(f'.job-card[data-job-id="{job}"]')
    await card.locator('.stage[data-stage="fetch"][data-status="running"]').wait_for()
    assert "50/200" in await card.locator('.stage[data-stage="fetch"]').inner_text()
    assert await card.locator('.genre[data-status="running"] .genre-name').inner_text() == "tech"
    assert "world" in await card.locator(".genres-waiting").inner_text()

    # Three advances, each emitted by the CLI as a shell script would. The bar is the
    # median: on a loaded two-CPU machine one sample now and then misses 1 s on scheduling alone.
    latencies = []
    for args, selector in [
        (["stage.completed", "--stage", "fetch"], '.stage[data-stage="fetch"][data-status="completed"]'),
        (["stage.started", "--stage", "preprocess", "--total", "80"], '.stage[data-stage="preprocess"][data-status="running"]'),
        (["stage.progress", "--stage", "preprocess", "--done", "40"], '.stage[data-stage="preprocess"] [aria-valuenow="40"]'),
    ]:
        await system.emit_cli(args[0], "--job", str(job), *args[1:])
        emitted = time.monotonic()
        await card.locator(selector).wait_for(timeout=5000)
        latencies.append(time.monotonic() - emitted)
    print(f"\nemit -> page: {', '.join(f'{1000 * t:.0f} ms' for t in latencies)}")
    assert sorted(latencies)[1] < 1.0
    assert await p.locator("#connection").get_attribute("data-mode") == "live"
    assert (await p.locator("#connection .conn-text").inner_text()) == "Live"


async def test_polling_fallback_and_back_to_live(system: System, page: Page) -> None:
    p = page.page
    blocked = False
    sockets: list[Any] = []
    subscribes: list[str] = []

    async def route(ws: Any) -> None:
        if blocked:
            await ws.close(code=4000, reason="blocked by the test")
            return
        server = ws.connect_to_server()
        ws.on_message(lambda message: (subscribes.append(message), server.send(message)))
        sockets.append(ws)

    await p.route_web_socket(re.compile(r"/v1/dashboard/ws"), route)
    job = await _start_job(system, ["tech"])
    await p.goto(system.url())
    await _live(p)
    await p.evaluate("window.__sameDocument = true")
    card = p.locator(f'.job-card[data-job-id="{job}"]')
    await card.wait_for()

    blocked = True
    for ws in sockets:
        await ws.close(code=1001, reason="the test drops the socket")
    await p.wait_for_selector('#connection[data-mode="polling"]', timeout=8000)
    assert (await p.locator("#connection .conn-text").inner_text()) == "Polling"

    await system.emit([_event("stage.completed", job, 4, stage="fetch")])
    await card.locator('.stage[data-stage="fetch"][data-status="completed"]').wait_for(timeout=8000)
    assert await p.locator("#connection").get_attribute("data-mode") == "polling"

    blocked = False
    await p.wait_for_selector('#connection[data-mode="live"]', timeout=35_000)
    assert await p.evaluate("window.__sameDocument") is True, "the page was reloaded"
    assert '"cursor"' in subscribes[-1], "the reconnect did not resume from its cursor"
    await system.emit([_event("stage.started", job, 5, stage="preprocess")])
    await card.locator('.stage[data-stage="preprocess"][data-status="running"]').wait_for(timeout=2000)


HIDDEN_TAB = """(() => {
    let hidden = false;
    Object.defineProperty(Document.prototype, "hidden", { get: () => hidden, configurable: true });
    Object.defineProperty(Document.prototype, "visibilityState", { get: () => (hidden ? "hidden" : "visible"), configurable: true });
    window.__setHidden = (value) => { hidden = value; document.dispatchEvent(new Event("visibilitychange")); };
})()"""


async def test_polling_pauses_while_hidden_and_catches_up(system: System, page: Page) -> None:
    p = page.page
    polls: list[float] = []
    p.on("request", lambda r: "/v1/dashboard/job-progress" in r.url and polls.append(time.monotonic()))
    await p.add_init_script(HIDDEN_TAB)

    async def refuse(ws: Any) -> None:
        await ws.close(code=4000, reason="no socket in this test")

    await p.route_web_socket(re.compile(r"/v1/dashboard/ws"), refuse)
    job = await _start_job(system, ["tech"])
    await p.goto(system.url())
    await p.wait_for_selector('#connection[data-mode="polling"]', timeout=8000)
    card = p.locator(f'.job-card[data-job-id="{job}"]')
    await card.wait_for()

    await p.evaluate("window.__setHidden(true)")
    hidden_at = time.monotonic()
    await system.emit([_event("stage.completed", job, 4, stage="fetch")])
    await asyncio.sleep(6)  # more than one polling interval
    assert [t for t in polls if t > hidden_at + 0.5] == [], "polled while the tab was hidden"
    assert await card.locator('.stage[data-stage="fetch"]').get_attribute("data-status") == "running"

    shown_at = time.monotonic()
    await p.evaluate("window.__setHidden(false)")
    await card.locator('.stage[data-stage="fetch"][data-status="completed"]').wait_for(timeout=2000)
    assert any(t >= shown_at for t in polls)


async def test_untrusted_text_is_text(system: System, page: Page) -> None:
    p = page.page
    evil = "<img src=x onerror=alert(1)>"
    job = uuid.uuid4()
    await system.emit([
        _event("job.started", job, 0, genres=[evil, "<b>bold</b>"], note="<svg onload=alert(2)>"),
        _event("genre.status", job, 1, genre=evil, status="running", phase="evidence"),
        _event("genre.status", job, 2, genre="<b>bold</b>", status="failed", error="<script>alert(3)</script>"),
        _event("stage.started", job, 3, stage="fetch"),
        _event("stage.failed", job, 4, stage="fetch", error="<img src=y onerror=alert(4)>"),
    ])
    await p.goto(system.url())
    await _live(p)
    card = p.locator(f'.job-card[data-job-id="{job}"]')
    await card.wait_for()
    assert await card.locator(".genre-name").all_inner_texts() == [evil, "<b>bold</b>"]
    assert "<script>alert(3)</script>" in await card.locator(".genre-error").inner_text()
    assert await card.locator(".note").inner_text() == "<svg onload=alert(2)>"
    await card.locator('.stage[data-stage="fetch"]').focus()  # the error tooltip, by keyboard
    assert await card.locator('.stage[data-stage="fetch"] .tip').inner_text() == "<img src=y onerror=alert(4)>"
    assert await card.locator('.stage[data-stage="fetch"] .tip').is_visible()

    await p.locator(f'tr.job-row[data-job-id="{job}"] .row-toggle').click()
    await p.locator(f"#detail-{job} .errors").wait_for()
    await p.wait_for_timeout(300)
    assert await p.locator("img, script:not([src]), b, svg[onload]").count() == 0
    assert page.dialogs == []


async def test_history_row_expands_to_detail(system: System, page: Page) -> None:
    p = page.page
    await p.goto(system.url())
    await _live(p)
    row = p.locator('tr.job-row[data-status="completed"]').first
    job = await row.get_attribute("data-job-id")
    toggle = row.locator(".row-toggle")
    await toggle.focus()
    await p.keyboard.press("Enter")
    detail = p.locator(f"#detail-{job}")
    await detail.locator(".detail-facts .fact", has_text="Articles").wait_for()  # the full detail arrived
    assert await toggle.get_attribute("aria-expanded") == "true"
    assert await detail.locator(".stage-bar").count() == 8
    assert await detail.locator('.stage-bar[data-status="completed"] .track-fill').count() == 8
    assert await detail.locator(".stage-bar .track-avg").count() == 8
    timeline = await detail.locator(".timeline li").all_inner_texts()
    assert len(timeline) == 10 and "completed" in timeline[-1]  # started, 8 stages, completed
    assert await detail.locator(".pace[data-pace=fast], .pace[data-pace=normal], .pace[data-pace=slow]").count() >= 8

    await p.keyboard.press("ArrowDown")  # arrow keys move between rows
    assert await p.evaluate("document.activeElement.closest('tr').dataset.jobId") != job
    await toggle.focus()
    await p.keyboard.press("Space")
    await detail.wait_for(state="detached")

    shown = await p.locator("tr.job-row").count()
    await p.locator('.pill[data-window="259200"]').click()
    await _until(lambda: p.locator("tr.job-row").count(), lambda n: n > shown)
    await p.select_option("#f-status", "failed")
    # the table is drawn on the next animation frame: wait for it rather than read it at once
    await _until(lambda: p.locator("tr.job-row").evaluate_all("rows => rows.map(r => r.dataset.status)"),
                 lambda statuses: statuses and set(statuses) == {"failed"})


async def _refuse_socket(page: Any) -> None:
    async def refuse(ws: Any) -> None:
        await ws.close(code=4000, reason="no socket in this test")

    await page.route_web_socket(re.compile(r"/v1/dashboard/ws"), refuse)


async def test_trends_come_from_the_stats_previous_window(system: System, page: Page) -> None:
    p = page.page
    stats_requests: list[str] = []
    p.on("request", lambda r: "/v1/dashboard/job-stats" in r.url and stats_requests.append(r.url))
    await p.goto(system.url())
    await _live(p)
    previous = (await system.get("/v1/dashboard/job-stats"))["previous"]
    assert previous["p95_duration_secs"] is not None  # the state has two days of finished jobs
    for metric in ("success", "avg", "p95", "jobs", "failed"):
        trend = p.locator(f'.metric[data-metric="{metric}"] .metric-trend[data-tone]')
        await trend.wait_for(timeout=5000)
        assert (await trend.get_attribute("title")).startswith("previous 24 h: "), metric
    assert re.fullmatch(r"previous 24 h: [\d,]+", await p.locator('.metric[data-metric="jobs"] .metric-trend').get_attribute("title"))
    assert stats_requests == []  # no stats(2W) - stats(W): the pushed stats carry the previous window


async def test_a_user_token_asks_who_it_is(system: System, page: Page) -> None:
    p = page.page
    urls: list[str] = []
    p.on("request", lambda r: urls.append(r.url))
    await p.goto(system.url(token=USER_TOKEN))
    await _live(p)
    await p.wait_for_selector('.metric[data-metric="jobs"]')
    await _until(lambda: p.locator("#f-user-field").is_hidden(), bool)  # no user filter for a user token
    assert any(u.endswith("/v1/me") for u in urls)
    await p.wait_for_timeout(300)
    assert not any("/dead-letters" in u for u in urls)  # not probed: no 403 in the console (the fixture checks)
    assert await p.locator('.metric[data-metric="dead"]').count() == 0


async def test_stats_follow_the_source_filter_even_when_pushed(system: System, page: Page) -> None:
    p = page.page
    frames: list[str] = []
    p.on("websocket", lambda ws: ws.on("framereceived", lambda data: frames.append(data if isinstance(data, str) else data.decode())))
    await p.goto(system.url("source=user"))
    await _live(p)
    by_user = (await system.get("/v1/dashboard/job-stats?trigger_source=user"))["total_jobs_24h"]
    assert by_user != (await system.get("/v1/dashboard/job-stats"))["total_jobs_24h"]
    await _until(lambda: p.locator("#metrics-title").inner_text(), lambda t: t.lower().endswith("· user-triggered"))
    jobs = p.locator('.metric[data-metric="jobs"] .metric-value')
    await _until(jobs.inner_text, lambda t: t == f"{by_user:,}")

    async def stats_pushed() -> int:
        return sum('"type":"stats"' in f for f in frames)

    pushed = await stats_pushed()
    await _start_job(system, ["tech"])  # a system job: a status change makes the server push stats
    await _until(stats_pushed, lambda n: n > pushed)
    deadline = time.monotonic() + 2.5  # the figures never show another source's jobs
    while time.monotonic() < deadline:
        assert await jobs.inner_text() == f"{by_user:,}"
        await asyncio.sleep(0.05)


async def test_stall_threshold_comes_from_the_stats(system: System, page: Page) -> None:
    p = page.page
    await _refuse_socket(p)

    async def short_stall(route: Any) -> None:  # as if the server ran with RECAP_STALL_AFTER=3
        response = await route.fetch()
        body = await response.json()
        body["stats"]["stall_after_secs"] = 3
        await route.fulfill(response=response, json=body)

    await p.route(re.compile(r"/v1/dashboard/job-progress"), short_stall)
    job = await _start_job(system, ["tech"])
    await p.goto(system.url())
    await p.wait_for_selector('#connection[data-mode="polling"]', timeout=8000)
    card = p.locator(f'.job-card[data-job-id="{job}"]')
    await card.wait_for()
    # the server (300 s) does not call it stalled; the page applies the published 3 s to the quiet job
    await p.wait_for_selector(f'.job-card[data-job-id="{job}"][data-status="stalled"]', timeout=8000)


async def test_polled_history_shows_completed_stages_from_the_api(system: System, page: Page) -> None:
    p = page.page
    await _refuse_socket(p)
    await p.goto(system.url())
    await p.wait_for_selector('#connection[data-mode="polling"]', timeout=8000)
    await p.wait_for_selector("tr.job-row")
    body = await system.get("/v1/dashboard/job-progress?window=86400&limit=100")
    finished = [j for j in body["recent_jobs"] if j["status"] in ("completed", "failed", "cancelled")]
    assert {j["status"] for j in finished} >= {"completed", "failed"}
    for job in finished[:12]:
        row = p.locator(f'tr.job-row[data-job-id="{job["job_id"]}"]')
        done, total = len(job["stages_completed"]), len(job["stage_names"])
        assert await row.locator(".col-stages .num").inner_text() == f"{done}/{total}", job["job_id"]
        cells = await row.locator(".meter i").evaluate_all("cells => cells.map(c => c.dataset.status)")
        completed = [name for name, status in zip(job["stage_names"], cells) if status == "completed"]
        assert completed == job["stages_completed"]
        if job["status"] == "failed" and job["last_stage"] not in job["stages_completed"]:
            assert cells[job["stage_names"].index(job["last_stage"])] == "failed"
