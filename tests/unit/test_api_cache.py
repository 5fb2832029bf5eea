"""The poll cache: shared answers, single flight, failures never cached."""

from __future__ import annotations

import asyncio

import pytest

from web.cache import ResponseCache


async def test_identical_polls_share_one_computation() -> None:
    cache, calls = ResponseCache(ttl=60), []
    gate = asyncio.Event()

    async def compute() -> bytes:
        calls.append(1)
        await gate.wait()
        return b"answer"

    waiting = [asyncio.ensure_future(cache.get("k", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [b"answer"] * 5
    assert await cache.get("k", compute) == b"answer"
    assert len(calls) == 1
    assert await cache.get("other", compute) == b"answer" and len(calls) == 2


async def test_a_failure_is_not_cached_and_an_expired_answer_is_recomputed() -> None:
    cache, results = ResponseCache(ttl=0.05), [RuntimeError("down"), b"one", b"two"]

    async def compute() -> bytes:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    with pytest.raises(RuntimeError):
        await cache.get("k", compute)
    assert await cache.get("k", compute) == b"one"
    assert await cache.get("k", compute) == b"one"
    await asyncio.sleep(0.06)
    assert await cache.get("k", compute) == b"two"


async def test_a_waiter_going_away_does_not_cancel_the_others() -> None:
    cache, gate = ResponseCache(ttl=60), asyncio.Event()

    async def compute() -> bytes:
        await gate.wait()
        return b"answer"

    first = asyncio.ensure_future(cache.get("k", compute))
    second = asyncio.ensure_future(cache.get("k", compute))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert await second == b"answer"


async def test_ttl_zero_turns_it_off() -> None:
    cache, calls = ResponseCache(ttl=0), []

    async def compute() -> bytes:
        calls.append(1)
        return b"x"

    await cache.get("k", compute)
    await cache.get("k", compute)
    assert len(calls) == 2


async def test_the_oldest_entries_go_first() -> None:
    cache = ResponseCache(ttl=60, max_entries=2)

    async def compute() -> bytes:
        return b"x"

    for key in ("a", "b", "c"):
        await cache.get(key, compute)
    assert list(cache._entries) == ["b", "c"]
