"""Flush-to-zero while training: pruned DWF weights sink into the subnormal range, slow on CPUs."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from dwf_core.config import TrainConfig
from dwf_core.denormals import flush_denormals, flushing
from dwf_core.train import ProgressEvent, train

from .helpers import mlp, separable_data

SUBNORMAL = 1e-39  # below float32's smallest normal, 1.18e-38


@pytest.fixture(autouse=True)
def _restore_flag() -> Iterator[None]:
    before = flushing()
    yield
    flush_denormals(before)


def test_flush_on_and_off() -> None:
    if not flush_denormals(True):
        pytest.skip("this CPU has no flush-to-zero control")
    assert flushing()
    assert float(torch.tensor([SUBNORMAL]) * 1.0) == 0.0
    flush_denormals(False)
    assert not flushing()
    assert float(torch.tensor([SUBNORMAL]) * 1.0) == pytest.approx(SUBNORMAL, rel=1e-3)


def test_a_thread_started_later_inherits_the_flag() -> None:
    """Why the entry points set it before torch starts its threads: a new thread copies its creator's."""
    if not flush_denormals(True):
        pytest.skip("this CPU has no flush-to-zero control")
    seen: list[bool] = []
    worker = threading.Thread(target=lambda: seen.append(flushing()))
    worker.start()
    worker.join()
    assert seen == [True]


def test_training_flushes_and_restores_the_callers_setting() -> None:
    if not flush_denormals(False):
        pytest.skip("this CPU has no flush-to-zero control")
    during: list[bool] = []

    def on_progress(event: ProgressEvent) -> None:
        during.append(flushing())

    cfg = TrainConfig(depth=3, epochs=2, batch_size=32, lr=0.1, seed=0, device="cpu")
    train(mlp(), separable_data(128), separable_data(32, seed=1), cfg, on_progress=on_progress)
    assert during and all(during)
    assert not flushing()
    # A caller that had it on keeps it on.
    flush_denormals(True)
    train(mlp(), separable_data(128), separable_data(32, seed=1), cfg)
    assert flushing()
