"""Sweeps in the job service: grid expansion, derived status, Pareto fronts, and the reconciler re-sending a lost
finalize message."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from dwf_service import jobs, sweeps
from dwf_service.db import session_scope
from dwf_service.models import DEFAULT_TENANT_ID, Job, Sweep, utcnow
from dwf_service.queue import TASK_FINALIZE_SWEEP, Message
from dwf_service.runner_loop import reconcile_once
from dwf_service.sweep_frontier import candidates, frontier, pareto
from tests.service_helpers import make_context, make_settings


def test_grid_points_are_the_cartesian_product_in_field_order() -> None:
    points = sweeps.grid_points({"target_sparsity": [0.9, 0.99], "type": ["dwf", "gmp"]})
    assert points == [
        {"type": "dwf", "target_sparsity": 0.9},
        {"type": "dwf", "target_sparsity": 0.99},
        {"type": "gmp", "target_sparsity": 0.9},
        {"type": "gmp", "target_sparsity": 0.99},
    ]
    with pytest.raises(ValueError, match="momentum"):
        sweeps.grid_points({"momentum": [0.5]})
    base = {"model": {"name": "m"}, "method": {"epochs": 3, "depth": 2}, "grid": {"depth": [3]}}
    assert sweeps.child_request(base, {"depth": 3}) == {"model": {"name": "m"}, "method": {"epochs": 3, "depth": 3}}


@pytest.mark.parametrize(
    ("statuses", "finished", "cancel", "expected"),
    [
        (["validating_files", "queued"], False, False, "queued"),
        (["queued", "running"], False, False, "running"),
        (["succeeded", "queued"], False, False, "running"),
        (["succeeded", "failed"], False, False, "finalizing"),
        (["succeeded", "succeeded"], True, False, "succeeded"),
        (["failed", "cancelled"], True, False, "failed"),
        (["succeeded", "failed"], True, False, "partially_failed"),
        (["succeeded", "cancelled"], True, True, "cancelled"),
        (["succeeded", "succeeded"], True, True, "succeeded"),  # cancelled too late to stop any child
    ],
)
def test_sweep_status_follows_the_children(statuses: list[str], finished: bool, cancel: bool, expected: str) -> None:
    sweep = Sweep(id="swp-x", tenant_id="t", request={}, cancel_requested=cancel)
    sweep.finished_at = utcnow() if finished else None
    assert sweeps.sweep_status(sweep, statuses) == expected


def _row(acc: float, cr: float, mac: float | None = None) -> dict[str, Any]:
    return {"test_accuracy": acc, "compression_ratio": cr, "mac_fraction": mac}


def test_pareto_keeps_the_rows_no_other_row_dominates() -> None:
    rows = [_row(0.98, 10), _row(0.97, 20), _row(0.975, 15), _row(0.96, 15), _row(0.90, 100), _row(0.97, 20)]
    front = pareto(rows, better="higher", key="compression_ratio")
    assert [(r["test_accuracy"], r["compression_ratio"]) for r in front] == [
        (0.98, 10),
        (0.975, 15),
        (0.97, 20),
        (0.90, 100),
    ]
    macs = [_row(0.98, 10, 0.5), _row(0.97, 20, 0.3), _row(0.96, 20, 0.4), _row(0.95, 20, None)]
    assert [r["mac_fraction"] for r in pareto(macs, better="lower", key="mac_fraction")] == [0.5, 0.3]
    assert pareto([], better="higher", key="compression_ratio") == []


def test_candidates_skip_unfinished_children_and_non_finite_numbers() -> None:
    children = [
        {
            "job_id": "a",
            "point": {"depth": 2},
            "status": "succeeded",
            "metrics": {"test_accuracy": 0.9, "compression_ratio": 5.0},
        },
        {
            "job_id": "b",
            "point": {"depth": 3},
            "status": "failed",
            "metrics": {"test_accuracy": 0.99, "compression_ratio": 50.0},
        },
        {
            "job_id": "c",
            "point": {"depth": 4},
            "status": "succeeded",
            "metrics": {"test_accuracy": None, "compression_ratio": 9.0},
        },
    ]
    assert [r["job_id"] for r in candidates(children)] == ["a"]
    out = frontier("swp-1", children)
    assert out["succeeded"] == 2 and [c["job_id"] for c in out["not_succeeded"]] == ["b"]
    assert out["mac_front"] == []


def test_the_reconciler_resends_a_lost_finalize_once_per_interval(tmp_path: Path) -> None:
    published: list[Message] = []
    ctx = make_context(make_settings(tmp_path / "data", requeue_after_seconds=60), published)
    with session_scope(ctx.sessions) as session:
        request = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "f"}, "method": {"epochs": 1}}
        sweep = sweeps.create_sweep(
            session,
            {**request, "grid": {"depth": [2, 3]}},
            [request, request],
            file_ids={},
            tenant_id=DEFAULT_TENANT_ID,
        )
        sweep_id = sweep.id
        children = [j.id for j in sweeps.children_of(session, sweep_id)]
    with session_scope(ctx.sessions) as session:
        for job_id in children:
            assert jobs.finish(session, job_id, jobs.FAILED, error={"code": "x", "message": "y"})
    published.clear()  # the children's own finalize message: "lost"
    assert reconcile_once(ctx) == []  # the children ended just now: their message may still be on its way
    old = utcnow() - timedelta(seconds=120)
    with session_scope(ctx.sessions) as session:
        session.execute(update(Job).where(Job.sweep_id == sweep_id).values(finished_at=old))
        session.execute(update(Sweep).where(Sweep.id == sweep_id).values(updated_at=old))
    assert reconcile_once(ctx) == [sweep_id]
    assert published == [Message(TASK_FINALIZE_SWEEP, sweep_id)]
    assert reconcile_once(ctx) == []  # re-sent at most once per interval
    assert sweeps.finalize_sweep(ctx, sweep_id) is True
    with session_scope(ctx.sessions) as session:
        session.execute(update(Sweep).where(Sweep.id == sweep_id).values(updated_at=old))
    assert reconcile_once(ctx) == []  # finalized: nothing to re-send
