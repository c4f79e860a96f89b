"""DDP training (dwf_core.distributed, ``TrainConfig.devices``) with 2 real gloo CPU processes.

The equality tolerance: both runs apply the same SGD updates, since each rank backpropagates its shard's summed
loss times 2 / global batch and DDP averages the two gradients, which is the global batch's mean gradient. Only the
order of float32 additions differs (two partial sums, then one all-reduce), about 1e-7 relative per step: after 3
epochs of 14 steps the weights differ by ~1e-7 (measured), far below 1e-5, while one different update (a shard
dropped, a gradient summed instead of averaged, a mask grown on another rank) moves weights by a whole step's size.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from dwf_core.checkpoint import latest_epoch
from dwf_core.config import TrainConfig
from dwf_core.distributed import MAX_DEVICES, backend_for
from dwf_core.errors import ConfigError, TrainingError
from dwf_core.train import ProgressEvent, TrainingCancelled, TrainResult, train

from .helpers import mlp, separable_data

DATA = separable_data(200)
VAL = separable_data(64, seed=1)
# batch 15: shards of 8 and 7 examples, and a last batch of 5 (3 and 2), so unequal shards are covered. A target
# with the gradual cut: masks grow from the weights during training, on each rank from its own copy.
CFG = TrainConfig(
    epochs=3, batch_size=15, lr=0.1, target_sparsity=0.8, seed=3, device="cpu", precision="fp32", progress_every=5
)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def single() -> TrainResult:
    """The reference: one process, the same global batch."""
    return train(mlp(), DATA, VAL, CFG)


def _max_weight_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def _assert_same_run(one: TrainResult, two: TrainResult) -> None:
    assert _max_weight_diff(one.model, two.model) < TOLERANCE
    assert len(one.history) == len(two.history) == CFG.epochs
    for h1, h2 in zip(one.history, two.history, strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=TOLERANCE)
        assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=TOLERANCE)
        for key in ("val_accuracy", "train_accuracy", "sparsity", "nnz", "lam"):
            assert h2[key] == h1[key], key
    assert one.extra["cut"] == two.extra["cut"]  # same pruning events, same mask sparsity


def test_two_processes_match_one_with_the_same_global_batch(single: TrainResult) -> None:
    events: list[ProgressEvent] = []
    two = train(mlp(), DATA, VAL, replace(CFG, devices=2), on_progress=events.append)
    assert two.extra["processes"] == 2 and single.extra["processes"] == 1
    assert single.extra["cut"]["events"] > 0 and single.extra["cut"]["mask_sparsity"] == pytest.approx(0.8, abs=0.01)
    _assert_same_run(single, two)
    # Progress comes from rank 0 in this process: every epoch once, step events with the global running loss.
    assert [e.epoch for e in events if e.kind == "epoch"] == [1, 2, 3]
    steps = [e for e in events if e.kind == "step"]
    assert steps and all(e.step % CFG.progress_every == 0 for e in steps)
    assert steps[-1].global_step == 2 * 14 + 10  # 14 steps per epoch, events at steps 5 and 10


def test_two_processes_match_one_when_distilling() -> None:
    """The soft term is scaled as the CE is (Comm.batch_mean): each rank its shard's sum × 2 / global batch."""
    cfg = replace(CFG, init="balanced", distill=0.5)
    one = train(mlp(), DATA, VAL, cfg)
    two = train(mlp(), DATA, VAL, replace(cfg, devices=2))
    assert one.extra["processes"] == 1 and two.extra["processes"] == 2
    _assert_same_run(one, two)


def test_rank_zero_probes_the_lr_alone_and_every_rank_trains_with_its_choice() -> None:
    """The LR probe (dwf_core.lr_probe) runs on rank 0 before DDP wraps the model; the other ranks take its choice."""
    cfg = replace(CFG, lr=3.0, lr_probe=True)  # LR 3 is too large for the toy: the probe picks a safer rung
    one = train(mlp(), DATA, VAL, cfg)
    two = train(mlp(), DATA, VAL, replace(cfg, devices=2))
    assert two.extra["processes"] == 2
    assert one.extra["lr_probe"]["chosen"] > 0 and one.extra["lr"] < 3.0
    probe_one, probe_two = one.extra["lr_probe"], two.extra["lr_probe"]
    assert {k: v for k, v in probe_two.items() if k not in ("seconds", "rungs")} == {
        k: v for k, v in probe_one.items() if k not in ("seconds", "rungs")
    }
    # Rank 0's process may sum a norm in another order than this one (5.0 vs 5.000000477 seen): floats to the ulp.
    assert len(probe_two["rungs"]) == len(probe_one["rungs"])
    for rung_one, rung_two in zip(probe_one["rungs"], probe_two["rungs"], strict=True):
        assert rung_two.keys() == rung_one.keys()
        for key, value in rung_one.items():
            assert rung_two[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
    assert two.extra["divergence_restarts"] == one.extra["divergence_restarts"] == []
    _assert_same_run(one, two)


def test_resume_under_ddp_equals_the_uninterrupted_run(tmp_path: Path, single: TrainResult) -> None:
    cfg = replace(CFG, devices=2)
    epochs_done: list[int] = []

    def stop_after_epoch_one() -> bool:
        return bool(epochs_done)

    def record(event: ProgressEvent) -> None:
        if event.kind == "epoch":
            epochs_done.append(event.epoch)

    with pytest.raises(TrainingCancelled):
        train(mlp(), DATA, VAL, cfg, checkpoint_dir=tmp_path, on_progress=record, should_stop=stop_after_epoch_one)
    assert latest_epoch(tmp_path) == 1
    torch.rand(1000)  # the checkpoint restores the RNG: nothing drawn in between matters
    resumed = train(mlp(seed=99), DATA, VAL, cfg, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 1 and resumed.extra["processes"] == 2
    _assert_same_run(single, resumed)


def test_a_checkpoint_resumes_with_another_number_of_processes(tmp_path: Path, single: TrainResult) -> None:
    calls = {"n": 0}

    def stop_in_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 14 + 3

    with pytest.raises(TrainingCancelled):
        train(mlp(), DATA, VAL, CFG, checkpoint_dir=tmp_path, should_stop=stop_in_epoch_two)
    resumed = train(mlp(), DATA, VAL, replace(CFG, devices=2), checkpoint_dir=tmp_path)
    assert resumed.resumed_from_epoch == 1
    _assert_same_run(single, resumed)


def test_cancel_stops_every_rank_at_once() -> None:
    before = set(_children())
    started = time.monotonic()
    asked: list[float] = []

    def stop_at_step_three() -> bool:
        asked.append(time.monotonic())
        return len(asked) > 3

    with pytest.raises(TrainingCancelled, match="epoch 1, step 3"):
        train(mlp(), DATA, VAL, replace(CFG, devices=2), should_stop=stop_at_step_three)
    # The other rank stopped at the same step on its own: fit waits for it to exit (it would terminate it only
    # after 10 s), and no process is left behind.
    assert time.monotonic() - asked[-1] < 8, "the second rank did not stop with rank 0"
    assert time.monotonic() - started < 60
    assert not set(_children()) - before, "a rank process was left running"


def _children() -> list[str]:
    """Processes this test process started and that still exist (Linux: /proc). In a whole test run these include
    servers of session fixtures, so tests compare with the children they found before the run."""
    pid = os.getpid()
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


_KILLED_RANK0 = """
import sys
from dataclasses import replace
from pathlib import Path
from dwf_core.train import train
from tests.dwf_core.helpers import mlp
from tests.dwf_core.test_distributed import CFG, DATA, VAL
marker = Path(sys.argv[1])
train(mlp(), DATA, VAL, replace(CFG, devices=2, epochs=10_000), on_progress=lambda e: marker.touch())
"""


def test_the_other_ranks_exit_when_rank_0_is_killed(tmp_path: Path) -> None:
    """SIGKILL of rank 0's process (a pool's hard time limit, the OOM killer): the other rank notices within a
    second and exits, instead of holding its device at the next collective until the collective timeout, and
    removes the run's temporary folder (the trainer, the data), which rank 0 no longer can."""
    import signal
    import subprocess
    import sys

    marker = tmp_path / "training"
    root = Path(__file__).resolve().parents[2]
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(root), "TMPDIR": str(temp)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RANK0, str(marker)], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        ranks = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(ranks) == 1 and len(list(temp.glob("dwf-ddp-*"))) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{ranks[0]}").exists() and "Z" not in _state(ranks[0]):
            assert time.monotonic() < deadline, "rank 1 outlived rank 0"
            time.sleep(0.1)
        assert not list(temp.glob("dwf-ddp-*")), "the run's folder was left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _state(pid: str) -> str:
    """The process state letter from /proc (Z: exited, not yet reaped); "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return ""


class FailsOnRankOne(nn.Module):
    """An MLP whose forward raises in the second process at its 4th call: a rank that dies mid-training."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raise on rank 1 at the 4th step, else the MLP."""
        self.calls += 1
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1 and self.calls == 4:
            raise RuntimeError("rank one lost its GPU")
        out: torch.Tensor = self.body(x)
        return out


def test_a_dead_rank_fails_the_run_with_its_reason() -> None:
    before = set(_children())
    started = time.monotonic()
    with pytest.raises(TrainingError) as err:
        train(FailsOnRankOne(), DATA, VAL, replace(CFG, target_sparsity=None, lam=1e-3, devices=2))
    assert err.value.code == "distributed_failure" and err.value.param == "devices"
    assert "rank 1: RuntimeError: rank one lost its GPU" in err.value.message
    assert not set(_children()) - before
    assert time.monotonic() - started < 60, "rank 0 waited for the dead rank"


class WithUnusedLayer(nn.Module):
    """An MLP with a layer its forward never calls (as a transformer's pooler under a classifier that skips it)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()
        torch.manual_seed(5)
        self.spare = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP alone."""
        out: torch.Tensor = self.body(x)
        return out


def test_an_unused_layer_neither_blocks_ddp_nor_moves() -> None:
    one = train(WithUnusedLayer(), DATA, VAL, CFG)
    two = train(WithUnusedLayer(), DATA, VAL, replace(CFG, devices=2))
    assert two.extra["processes"] == 2
    _assert_same_run(one, two)
    spare = {k: v for k, v in two.model.state_dict().items() if k.startswith("spare.")}
    assert spare and all(torch.equal(v, one.model.state_dict()[k]) for k, v in spare.items())


class BreaksInAnotherProcess(nn.Module):
    """An MLP that pickles here but cannot be rebuilt in a spawned process (as a class it cannot import)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()
        self.home = os.getpid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP."""
        out: torch.Tensor = self.body(x)
        return out

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["home"] != os.getpid():
            raise ImportError("no module named 'notebook_cell_7'")
        super().__setstate__(state)


def test_a_rank_that_cannot_start_fails_the_run_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(TrainingError) as err:
        train(BreaksInAnotherProcess(), DATA, VAL, replace(CFG, devices=2))
    assert err.value.code == "distributed_failure" and "notebook_cell_7" in err.value.message
    assert time.monotonic() - started < 60, "rank 0 waited at the rendezvous"


def test_a_model_that_does_not_pickle_is_refused() -> None:
    model = mlp()
    model.hook = lambda: None  # type: ignore[assignment]
    with pytest.raises(TrainingError) as err:
        train(model, DATA, VAL, replace(CFG, devices=2))
    assert err.value.code == "distributed_failure" and "does not pickle" in err.value.message


@pytest.mark.parametrize("bad", [0, -1, MAX_DEVICES + 1, True, 2.0, "2"])
def test_bad_devices_refused(bad: Any) -> None:
    with pytest.raises(ConfigError) as err:
        replace(CFG, devices=bad).resolved()
    assert err.value.param == "devices"


def test_devices_need_cuda_or_cpu() -> None:
    with pytest.raises(ConfigError) as err:
        replace(CFG, device="mps", devices=2).resolved()
    assert err.value.param == "devices"
    with pytest.raises(TrainingError) as terr:
        backend_for(torch.device("cuda"), torch.cuda.device_count() + 1)
    assert terr.value.code == "device_unavailable" and terr.value.param == "devices"
    assert backend_for(torch.device("cpu"), 2) == "gloo"


def _fit_two_ranks_for_one_epoch(_: int) -> int:
    return int(train(mlp(), DATA, VAL, replace(CFG, devices=2, epochs=1)).extra["processes"])


def test_a_celery_prefork_child_can_start_the_ranks() -> None:
    """The compose worker runs tasks in billiard's daemonic pool children, where multiprocessing refuses to start
    processes; the ranks are plain child processes, so a DDP job runs there too."""
    from billiard import Pool

    with Pool(1) as pool:
        assert pool.map(_fit_two_ranks_for_one_epoch, [0]) == [2]


def test_a_divergence_restart_happens_on_every_rank_at_the_same_step() -> None:
    """The diverging run of test_divergence_restart.py (LR 3: NaN at epoch 2, step 2) under DDP: the ranks agree on
    the restart (a NaN on any rank), restart together, and train on exactly as a 2-process run clipped from the start.

    Not compared with one process after the restart: at LR 3 the loss climbs to ~2000 and the last-bit differences of
    the summation order grow to 1e-2 within 3 epochs, with or without a restart (measured)."""
    from .test_divergence_restart import CFG as DIVERGING
    from .test_divergence_restart import DATA as DIV_DATA
    from .test_divergence_restart import VAL as DIV_VAL

    one = train(mlp(), DIV_DATA, DIV_VAL, DIVERGING)
    two = train(mlp(), DIV_DATA, DIV_VAL, replace(DIVERGING, devices=2))
    [r1], [r2] = one.extra["divergence_restarts"], two.extra["divergence_restarts"]
    where = ("epoch", "step", "global_step", "lr_after", "max_grad_norm_after")
    assert [r1[k] for k in where] == [r2[k] for k in where]
    clipped = train(mlp(), DIV_DATA, DIV_VAL, replace(DIVERGING, devices=2, max_grad_norm=r2["max_grad_norm_after"]))
    assert not clipped.extra["divergence_restarts"]
    assert _max_weight_diff(two.model, clipped.model) == 0.0
    assert [h["train_loss"] for h in two.history] == [h["train_loss"] for h in clipped.history]


def test_a_lam_restart_decided_by_rank_0_restarts_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """test_lam_restart.py's over-pruning λ (patched into the λ map, in this process only: rank 1 takes λ₀ from
    rank 0 before the first step, and the restart decision at the epoch's end) restarts the 2-process run at the
    same epoch with the same λ as one process, which it then matches."""
    from dwf_core import defaults

    from .test_lam_restart import DATA as LAM_DATA
    from .test_lam_restart import OVER_PRUNING_LAM, _cfg, _without_one_class_restart
    from .test_lam_restart import VAL as LAM_VAL

    monkeypatch.setattr(defaults, "lam_for_target", lambda *_args, **_kw: OVER_PRUNING_LAM)
    _without_one_class_restart(monkeypatch)
    cfg = _cfg()
    one = train(mlp(), LAM_DATA, LAM_VAL, cfg)
    two = train(mlp(), LAM_DATA, LAM_VAL, replace(cfg, devices=2))
    assert one.extra["lam_restarts"], "the setting no longer over-prunes: pick another λ"
    assert [(r["epoch"], r["next_lam"]) for r in two.extra["lam_restarts"]] == [
        (r["epoch"], r["next_lam"]) for r in one.extra["lam_restarts"]
    ]
    assert _max_weight_diff(one.model, two.model) < TOLERANCE


def test_dwf_train_devices(tmp_path: Path) -> None:
    """`dwf train --devices 2 --device cpu` trains in 2 processes (metrics.json ``processes``); a count out of range
    or beyond the GPUs present is one error line and exit status 2, before any training."""
    from typer.testing import CliRunner

    from dwf_core.cli import app

    from .helpers import write_band_npz

    data = write_band_npz(tmp_path / "small.npz", 300, 100)
    argv = ["train", "--model", "lenet_300_100", "--data", str(data), "--epochs", "1", "--lam", "1e-3", "--no-onnx"]
    runner = CliRunner()
    result = runner.invoke(app, [*argv, "--device", "cpu", "--devices", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["config"]["devices"] == 2

    result = runner.invoke(app, [*argv, "--device", "cpu", "--devices", "0", "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "[invalid_config] (devices)" in result.output
    if torch.cuda.device_count() < MAX_DEVICES:
        result = runner.invoke(app, [*argv, "--device", "cuda", "--devices", "8", "--out", str(tmp_path / "gpus")])
        assert result.exit_code == 2 and "[device_unavailable]" in result.output
        assert not (tmp_path / "gpus" / "checkpoints").exists()  # refused before training started
