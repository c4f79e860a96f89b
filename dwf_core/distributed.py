"""Training one run over several processes with DistributedDataParallel (``TrainConfig.devices``).

Rank 0 is the calling process: it keeps the progress callback, ``should_stop``, checkpoints and the trained model,
so a caller (the service's worker with its lease and cancel check) sees one ordinary ``Trainer.fit``. Ranks
1..N-1 are child processes that rebuild the same trainer from a pickled copy (same settings, seed and weights),
train on their share of every batch and exit when training ends. NCCL joins the ranks on CUDA (rank r on GPU
base+r), gloo on CPU.

Every global batch (``batch_size`` examples, the same order on every rank: the shuffling generator is seeded
alike) is split into ``devices`` contiguous shards. Each rank backpropagates its shard's summed loss times
devices / global batch, and DDP averages the gradients, so the update is the gradient of the global batch's mean
loss, as in one process: results match a single process with the same ``batch_size`` up to float summation
order (tests/dwf_core/test_distributed.py). What differs: BatchNorm statistics are per shard (as in any DDP run)
and dropout draws the same masks on every rank.

``Comm`` is the trainer's view of the other ranks; its single-process default does nothing, so ``Trainer`` has
no branches for the distributed case beyond "only rank 0 evaluates, decides and writes".
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dwf_core.errors import DwfError, TrainingError

if TYPE_CHECKING:
    from dwf_core.evaluate import Labeled
    from dwf_core.train import Trainer, TrainResult

# Processes one job may train on: GPUs of one worker, or CPU processes (where more than a few only add overhead).
MAX_DEVICES = 8
# How long a rank waits for the others at a collective. Rank 0 evaluates and checkpoints alone at every epoch end
# while the others wait, so this must outlast the longest evaluation; a rank that dies closes its connections and
# the others fail at once, without waiting for it.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
# How long the rank processes may take to start (import torch, unpickle the trainer) before the run fails.
READY_SECONDS = 300.0
# How often a rank checks that rank 0's process is still there.
PARENT_POLL_SECONDS = 0.5
# After a run, how long the other ranks get to leave (they only close their process group) before termination.
JOIN_SECONDS = 60.0
# The trainer attributes that stay in the parent: callbacks (closures over the service's database session),
# the data (handed to the ranks in a file of its own, memory-mapped) and the communicator.
_NOT_SENT = ("on_progress", "should_stop", "train_data", "val_data", "comm")

T = TypeVar("T")


class Comm:
    """One process, no peers: every operation returns its input. ``ProcessGroupComm`` is the DDP version."""

    rank = 0
    world_size = 1

    @property
    def distributed(self) -> bool:
        """Whether there are other ranks."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: evaluates, decides restarts and λ, writes checkpoints, reports progress."""
        return self.rank == 0

    def local_device(self, device: torch.device) -> torch.device:
        """This rank's device, given the configured one."""
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training step calls (DDP averages the gradients across ranks)."""
        return model

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch's indices."""
        return idx

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective to backpropagate, summed per-example loss of this rank's examples for the metrics)."""
        mean = nn.functional.cross_entropy(logits, y)
        return mean, mean.detach().float() * y.shape[0]

    def batch_mean(self, summed: torch.Tensor, n: int) -> torch.Tensor:
        """A per-example term summed over this rank's ``n`` examples, as the objective's batch mean."""
        return summed / max(n, 1)

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank's ``flag`` is (a stop request, a non-finite loss)."""
        return flag

    def total(self, sums: torch.Tensor, seen: int) -> tuple[torch.Tensor, int]:
        """Loss/accuracy sums and example counts added over ranks (a new tensor; ``sums`` is kept)."""
        return sums, seen

    def share(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable; CPU tensors only)."""
        return obj

    def sync_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's (same shapes on every rank)."""

    def barrier(self) -> None:
        """Wait for every rank."""


SINGLE = Comm()


class ProcessGroupComm(Comm):
    """A rank of the default torch.distributed process group (gloo on CPU, NCCL on CUDA)."""

    def __init__(self, rank: int, world_size: int, backend: str, store: Path, device: torch.device) -> None:
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = self.local_device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL's object collectives use the current device
        # The rendezvous goes through a file in the run's private folder: a TCPStore would listen on every network
        # interface of the worker for the whole run, to anyone who connects.
        with _loopback_only():
            dist.init_process_group(
                backend,
                store=dist.FileStore(str(store), world_size),  # type: ignore[attr-defined]  # not in its stubs
                rank=rank,
                world_size=world_size,
                timeout=COLLECTIVE_TIMEOUT,
            )
        self._global_n = 0

    def close(self) -> None:
        """Leave the process group (a later job in the same process makes a new one)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def local_device(self, device: torch.device) -> torch.device:
        """GPU base+rank on CUDA (base: the configured index, else 0); CPU stays CPU."""
        if device.type == "cuda":
            return torch.device("cuda", (device.index or 0) + self.rank)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP over ``model`` (rank 0's weights are broadcast now). ``static_graph``: the same parameters take part
        in every step (the models trained here have no data-dependent branches), so DDP learns once which are unused
        (a transformer's pooler; they stay untouched, as in one process) instead of searching the graph every step,
        and tolerates the forward pass without a backward pass of a step that stops at a non-finite loss."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, static_graph=True)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """A contiguous slice; shards differ by at most one example (a short last batch may leave one empty)."""
        self._global_n = int(idx.shape[0])
        return idx.tensor_split(self.world_size)[self.rank]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss as ``batch_mean`` scales it."""
        summed = nn.functional.cross_entropy(logits, y, reduction="sum")
        return self.batch_mean(summed, int(y.shape[0])), summed.detach().float()

    def batch_mean(self, summed: torch.Tensor, n: int) -> torch.Tensor:
        """Summed over this rank's shard, scaled by world / global batch: DDP's average of the ranks' gradients is
        then the gradient of the global batch's mean, also when shards differ in size (or one is empty)."""
        return summed * (self.world_size / max(self._global_n, 1))

    def any(self, flag: bool) -> bool:
        """All-reduce (max) of one flag: every rank leaves with the same answer."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def total(self, sums: torch.Tensor, seen: int) -> tuple[torch.Tensor, int]:
        """All-reduce (sum) of the sums with the count appended."""
        t = torch.cat([sums.detach().float().to(self.device), torch.tensor([float(seen)], device=self.device)])
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t[:-1].to(sums.device), round(float(t[-1]))

    def share(self, obj: T) -> T:
        """Broadcast from rank 0 by pickling."""
        box: list[Any] = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        shared: T = box[0]
        return shared

    def sync_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Broadcast every tensor from rank 0 (bool tensors travel as uint8: not every backend takes bool)."""
        for t in tensors:
            if t.dtype == torch.bool:
                carrier = t.to(torch.uint8)
                dist.broadcast(carrier, src=0)
                t.copy_(carrier.bool())
            else:
                dist.broadcast(t, src=0)

    def barrier(self) -> None:
        """A gloo/NCCL barrier."""
        dist.barrier()


def can_spread(model: nn.Module) -> bool:
    """Whether the other ranks can receive ``model``: not once it is factorized (a fine-tuning phase gets the trained
    model), since torch pickles parametrized modules only through their state_dict, and rebuilding the factors
    elsewhere needs the run that made them."""
    from torch.nn.utils import parametrize

    return not any(parametrize.is_parametrized(m) for m in model.modules())


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """gloo and NCCL open their connections between the ranks on the loopback interface (all ranks are on this
    machine), not on the interface the host name resolves to; an operator's own GLOO_/NCCL_SOCKET_IFNAME wins."""
    loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
    names = [n for n in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if loopback and n not in os.environ]
    for name in names:
        os.environ[name] = str(loopback)
    try:
        yield
    finally:
        for name in names:
            os.environ.pop(name, None)


def backend_for(device: torch.device, world_size: int) -> str:
    """NCCL on CUDA, gloo on CPU; checks that the machine has the GPUs asked for.

    Raises:
        TrainingError: ``device_unavailable`` (too few GPUs, or a device DDP does not run on: MPS).
    """
    if device.type == "cuda":
        base = device.index or 0
        available = torch.cuda.device_count()
        if base + world_size > available:
            raise TrainingError(
                f"devices={world_size} needs GPUs {base}..{base + world_size - 1}; this machine has {available}",
                code="device_unavailable",
                param="devices",
            )
        return "nccl"
    if device.type != "cpu":
        raise TrainingError(
            f"devices > 1 runs on CUDA GPUs or CPU processes, not on {device.type!r}; set device to cuda or cpu",
            code="device_unavailable",
            param="devices",
        )
    return "gloo"


def fit_distributed(trainer: Trainer, device: torch.device) -> TrainResult:
    """Run ``trainer.fit()`` as rank 0 of ``trainer.config.devices`` processes and return its result.

    Raises:
        What ``Trainer.fit`` raises (rank 0's error: the other ranks reach the same decisions), or
        TrainingError ``distributed_failure`` when another rank failed (its error) or the trainer cannot be sent to
        the other ranks (a model that does not pickle).
    """
    world = trainer.config.devices
    backend = backend_for(device, world)
    state = {k: v for k, v in trainer.__dict__.items() if k not in _NOT_SENT}
    try:
        payload = pickle.dumps((type(trainer), state))
    except Exception as exc:  # whatever the model's classes raise when pickled
        raise TrainingError(
            f"devices > 1 sends the model to the other processes, and it does not pickle: {exc}",
            code="distributed_failure",
            param="devices",
        ) from exc
    # The CPU threads are split between the ranks (each otherwise takes all cores and they fight over them).
    threads_before = torch.get_num_threads()
    threads = max(1, threads_before // world)
    ranks = _Ranks(payload, trainer.train_data, trainer.val_data, [world, backend, device, threads])
    torch.set_num_threads(threads)
    comm: ProcessGroupComm | None = None
    # After a run the others leave on their own; after a failure of rank 0 alone they would wait at their next
    # collective (a closed process group does not wake them), so they are terminated soon.
    patience = 2.0
    try:
        ranks.wait_ready()
        comm = ProcessGroupComm(0, world, backend, ranks.dir / "store", device)
        trainer.comm = comm
        try:
            result = trainer.fit()
        except DwfError:
            patience = 10.0  # the others reached the same decision (cancel, out of restarts) and are leaving
            raise
        comm.barrier()
        patience = JOIN_SECONDS
        return result
    except DwfError:
        raise
    except Exception as exc:
        failure = ranks.failure(wait=3.0)
        if failure is None:
            raise
        raise TrainingError(
            f"a training process failed: {failure}", code="distributed_failure", param="devices"
        ) from exc
    finally:
        trainer.comm = SINGLE
        if comm is not None:
            comm.close()
        ranks.end(patience)
        torch.set_num_threads(threads_before)


class _Ranks:
    """Ranks 1..N-1: child processes started with ``python -c`` (not multiprocessing, which refuses to start them
    from Celery's daemonic prefork children), and the folder they read the trainer and the data from.

    The trainer (its model's weights included) is pickled as it is before ``fit`` (this process writes it and only
    its own children, in a folder only this user can read, load it: never a user's file); the data are written as
    plain tensors with ``torch.save`` and memory-mapped by the ranks (``weights_only=True``), so N ranks share one
    copy in the page cache. The ranks import
    the pickled classes from this process's ``sys.path``. The folder (mode 0700) also holds the rendezvous file.
    """

    def __init__(self, payload: bytes, train: Labeled, val: Labeled, args: list[Any]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dwf-ddp-"))
        (self.dir / "trainer.pkl").write_bytes(payload)
        # Plain tensors only, so the ranks read them with weights_only=True (no unpickling of arbitrary objects).
        tensors = {"train_x": train.x, "train_y": train.y, "val_x": val.x, "val_y": val.y}
        torch.save(tensors, self.dir / "data.pt")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        world = int(args[0])
        code = "import sys; from dwf_core.distributed import rank_process; sys.exit(rank_process(sys.argv[1:]))"
        self.procs = [
            subprocess.Popen([sys.executable, "-c", code, str(self.dir), str(rank), *map(str, args)], env=env)
            for rank in range(1, world)
        ]

    def wait_ready(self) -> None:
        """Wait until every rank has rebuilt the trainer: one that failed to (a class its process cannot import)
        would otherwise leave rank 0 waiting at the rendezvous for COLLECTIVE_TIMEOUT.

        Raises:
            TrainingError: ``distributed_failure`` with the rank's error, or when not ready in READY_SECONDS.
        """
        deadline = time.monotonic() + READY_SECONDS
        while not all((self.dir / f"ready-{rank}").exists() for rank in range(1, len(self.procs) + 1)):
            failure = self.failure(wait=0.0)
            if failure is not None:
                raise TrainingError(
                    f"a training process failed to start: {failure}", code="distributed_failure", param="devices"
                )
            if time.monotonic() > deadline:
                raise TrainingError(
                    f"the training processes did not start within {READY_SECONDS:g} s",
                    code="distributed_failure",
                    param="devices",
                )
            time.sleep(0.05)

    def failure(self, wait: float) -> str | None:
        """The error of a rank that exited with one (waiting up to ``wait`` s for one to), or None."""
        deadline = time.monotonic() + wait
        while True:
            for rank, proc in enumerate(self.procs, start=1):
                if proc.poll() not in (None, 0):
                    error = self.dir / f"error-{rank}"
                    if error.exists():
                        return f"rank {rank}: {error.read_text().strip()}"
                    return f"rank {rank} exited with status {proc.returncode}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def end(self, patience: float) -> None:
        """Let the ranks exit within ``patience`` seconds, terminate those still running, remove the folder."""
        deadline = time.monotonic() + patience
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class _Split:
    """A rank's view of a dataset split: what the trainer reads of one (``dwf_core.evaluate.Labeled``)."""

    x: torch.Tensor
    y: torch.Tensor


def rank_process(argv: list[str]) -> int:
    """Entry of a rank process (1..N-1): rebuild the trainer, train alongside rank 0; 0 when training ended.
    An error is written to the folder for rank 0 to report, and the process exits with status 1. A rank that
    outlives rank 0's process removes the folder, which rank 0 can no longer do."""
    folder, rank = Path(argv[0]), int(argv[1])
    world, backend, device, threads = int(argv[2]), argv[3], argv[4], int(argv[5])
    parent = os.getppid()
    _exit_with_parent(parent, folder)
    try:
        torch.set_num_threads(threads)
        cls, state = pickle.loads((folder / "trainer.pkl").read_bytes())
        data = torch.load(folder / "data.pt", weights_only=True, mmap=True)
        trainer: Trainer = cls.__new__(cls)
        trainer.__dict__.update(state)
        trainer.train_data = _Split(data["train_x"], data["train_y"])
        trainer.val_data = _Split(data["val_x"], data["val_y"])
        trainer.on_progress, trainer.should_stop = None, None
        (folder / f"ready-{rank}").touch()
        comm = ProcessGroupComm(rank, world, backend, folder / "store", torch.device(device))
        trainer.comm = comm
        try:
            trainer.fit()
            comm.barrier()
        finally:
            comm.close()
    except DwfError as err:
        # Rank 0 reports its own error (they share decisions); this one counts only if rank 0 saw none.
        (folder / f"error-{rank}").write_text(f"[{err.code}] {err.message}"[:2000])
        return 1
    except BaseException as exc:
        (folder / f"error-{rank}").write_text(f"{type(exc).__name__}: {exc}"[:2000])
        # A lost connection is often rank 0's death, whose sockets close a moment before this process is orphaned.
        deadline = time.monotonic() + 1.0
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.05)
        raise
    finally:
        if os.getppid() != parent:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def _exit_with_parent(parent: int, folder: Path) -> None:
    """End this rank as soon as rank 0's process is gone (SIGKILL, a pool's hard time limit), removing the run's
    folder: NCCL would otherwise hold the GPU at its next collective until COLLECTIVE_TIMEOUT, and the worker's next
    job needs it."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        shutil.rmtree(folder, ignore_errors=True)
        os._exit(3)

    threading.Thread(target=watch, name="dwf-rank-parent-watch", daemon=True).start()
