"""Pure parts of the job-progress response: stage index and genre phases."""

from __future__ import annotations

from typing import Any

import msgspec

from web.api import genre_progress, stage_index, stage_state, sub_stage_progress


def stages(*statuses: str) -> list:
    names = ["fetch", "preprocess", "dedup", "genre", "select", "evidence", "dispatch", "persist"]
    return [
        stage_state(name, None) if status == "pending" else stage_state(name, _row(status=status))
        for name, status in zip(names, statuses + ("pending",) * (8 - len(statuses)), strict=True)
    ]


def _row(**fields: Any) -> dict[str, Any]:
    base = {"status": "running", "started_at": None, "finished_at": None, "done": None, "total": None,
            "attempts": 1, "error": None}  # fmt: skip
    return {**base, **fields}


def genre(name: str, status: str, phase: str | None = None) -> dict[str, Any]:
    return {"genre": name, "status": status, "phase": phase, "cluster_count": None, "article_count": None,
            "attempts": 1, "error": None}  # fmt: skip


def test_stage_index_is_the_running_stage_or_the_next_one() -> None:
    assert stage_index(None, stages()) == 0  # started, no stage yet
    assert stage_index("dedup", stages("completed", "completed", "running")) == 2
    assert stage_index(None, stages("completed", "completed", "completed")) == 3  # between stages
    assert stage_index(None, stages(*["completed"] * 8)) == 7
    assert stage_index(None, stages("completed", "failed")) == 1


def test_sub_stage_progress_is_absent_without_genre_rows() -> None:
    assert sub_stage_progress(["tech", "world"], []) is msgspec.UNSET


def test_sub_stage_progress_follows_the_least_advanced_genre() -> None:
    rows = [genre("a", "running", "clustering"), genre("b", "running", "summarization"), genre("c", "succeeded")]
    assert msgspec.to_builtins(sub_stage_progress(None, rows)) == {
        "phase": "clustering", "total_genres": 3, "completed_genres": 2,
    }  # fmt: skip
    waiting = sub_stage_progress(["a", "b", "c", "d"], rows)
    assert (waiting.phase, waiting.total_genres, waiting.completed_genres) == ("evidence_building", 4, 3)
    done = sub_stage_progress(None, [genre("a", "partial", "clustering"), genre("b", "failed")])
    assert (done.phase, done.completed_genres) == ("summarization", 2)


def test_genre_progress_lists_expected_genres_first() -> None:
    progress = genre_progress(["world", "tech"], [genre("extra", "running"), genre("tech", "partial")])
    assert list(progress) == ["world", "tech", "extra"]
    assert progress["world"].status == "pending" and progress["tech"].status == "partial"
