"""The ETA of a training run is that of the attempt that runs: restarts and resumes do not skew it.

A fake clock advances one second per step (``should_stop`` is polled once before each), evaluation takes no time, so
the right ETA at every event is exactly the number of steps left. Timing the whole fit against the attempt's
fraction, as before, counted the abandoned attempt's seconds as time spent on the new one (an ETA several times too
long after a restart) and a resumed run's skipped epochs as progress made in its first seconds (far too short).
"""

from __future__ import annotations

import importlib
import io
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from dwf_core import defaults
from dwf_core.config import TrainConfig
from dwf_core.train import ProgressEvent, Trainer, TrainingCancelled

from .helpers import mlp, separable_data

DATA = separable_data(256)
VAL = separable_data(64, seed=1)
# Diverges at epoch 2, step 2 (tests/dwf_core/test_divergence_restart.py): one restart, 8 steps per epoch.
DIVERGING = TrainConfig(depth=2, epochs=4, batch_size=32, lr=3.0, lam=1e-3, seed=0, device="cpu", progress_every=1)


class _Clock:
    """time.monotonic for dwf_core.train; ``tick`` is the trainer's should_stop, one second per step."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def tick(self) -> bool:
        self.now += 1.0
        return False


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    # The module itself: the package's attribute ``dwf_core.train`` is the ``train`` function.
    monkeypatch.setattr(importlib.import_module("dwf_core.train"), "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def _assert_eta_is_the_steps_left(events: list[ProgressEvent]) -> None:
    for e in events:
        if e.kind == "step":
            assert e.eta_s == pytest.approx(e.total_steps - e.global_step), e
        elif e.global_step == 0:  # a restart: the new attempt has no pace yet
            assert e.eta_s is None and e.fraction == 0.0


def test_the_eta_after_a_divergence_restart_is_that_of_the_new_attempt(clock: _Clock) -> None:
    events: list[ProgressEvent] = []
    Trainer(mlp(), DATA, VAL, DIVERGING, on_progress=events.append, should_stop=clock.tick).fit()
    restart = next(i for i, e in enumerate(events) if e.kind == "restart")
    assert restart == 9 + 1  # 8 steps and the epoch of the first attempt, one step of its second epoch, then this
    assert [e.attempt for e in events] == [1] * restart + [2] * (len(events) - restart)
    _assert_eta_is_the_steps_left(events)
    # The whole fit took 10 + 32 s; the old estimate, elapsed × (1 − fraction) / fraction, after one step of the
    # second attempt: 11 × 31 / 1 = 341 s instead of 31.
    first = events[restart + 1]
    assert (first.global_step, first.elapsed_s, first.eta_s) == (1, 11.0, 31.0)


def test_the_eta_after_a_lam_restart_is_that_of_the_new_attempt(clock: _Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every weight counted as dead: a λ restart after epoch 1, then a second attempt to the end."""
    monkeypatch.setattr(defaults, "DEAD_THRESHOLD", 10.0)
    monkeypatch.setattr(defaults, "MAX_LAM_RESTARTS", 1)
    cfg = replace(DIVERGING, lr=0.1, lam=None, target_sparsity=0.5, epochs=3)
    events: list[ProgressEvent] = []
    Trainer(mlp(), DATA, VAL, cfg, on_progress=events.append, should_stop=clock.tick).fit()
    restarted = [e for e in events if e.metrics and "restart" in e.metrics]
    assert len(restarted) == 1 and restarted[0].attempt == 2
    _assert_eta_is_the_steps_left(events)


def test_a_resumed_run_times_only_its_own_steps(clock: _Clock, tmp_path: Path) -> None:
    """Stopped two epochs into the second attempt: the resumed run starts at 50%, its ETA from its own pace."""
    seen: list[ProgressEvent] = []

    def stop() -> bool:
        clock.tick()
        restart = next((i for i, e in enumerate(seen) if e.kind == "restart"), len(seen))
        return sum(1 for e in seen[restart:] if e.kind == "epoch") == 2

    with pytest.raises(TrainingCancelled):
        Trainer(mlp(), DATA, VAL, DIVERGING, checkpoint_dir=tmp_path, on_progress=seen.append, should_stop=stop).fit()
    events: list[ProgressEvent] = []
    Trainer(
        mlp(), DATA, VAL, DIVERGING, checkpoint_dir=tmp_path, on_progress=events.append, should_stop=clock.tick
    ).fit()
    assert events[0].global_step == 17 and events[0].attempt == 2  # resumed at step 16 of 32
    _assert_eta_is_the_steps_left(events)
    # The old estimate after the resumed run's first step: 1 × 15 / 17 ≈ 0.9 s instead of 15.
    assert (events[0].elapsed_s, events[0].eta_s) == (1.0, 15.0)


def test_dwf_train_shows_the_restart_and_the_attempts_eta() -> None:
    from dwf_core.cli import _TrainProgress
    from dwf_core.divergence import restart_message, restart_record

    out = io.StringIO()
    bar = _TrainProgress(Console(file=out, width=200))
    bar.on_phase("training")
    common = {"epochs": 4, "steps_per_epoch": 8, "total_steps": 32, "lr": 3.0}
    bar.on_progress(ProgressEvent("step", 2, step=1, global_step=9, loss=1.2, elapsed_s=9, attempt_steps=9,
                                  attempt_elapsed_s=9.0, **common))  # fmt: skip
    task = bar.progress.tasks[0]
    assert (task.description, task.completed, task.fields["eta"]) == ("training", 9, "0:00:23")
    record = restart_record(epoch=2, step=2, global_step=9, loss=float("nan"), lr=3.0, max_grad_norm=None, restart=1)
    bar.on_progress(ProgressEvent("restart", 2, step=2, global_step=0, loss=float("nan"), elapsed_s=10,
                                  restart=record, attempt=2, **common))  # fmt: skip
    assert restart_message(record) in out.getvalue()
    assert (task.description, task.completed, task.fields["eta"]) == ("training (attempt 2)", 0, "-")
    bar.on_progress(ProgressEvent("step", 1, step=4, global_step=4, loss=0.9, elapsed_s=14, attempt=2,
                                  attempt_steps=4, attempt_elapsed_s=4.0, **common))  # fmt: skip
    assert (task.description, task.completed, task.fields["eta"]) == ("training (attempt 2)", 4, "0:00:28")
