"""Flush-to-zero for subnormal floats on the CPU: DWF drives unneeded weights toward zero on purpose.

A factor product below float32's smallest normal (1.2e-38) is subnormal, and x86 CPUs compute with subnormals in
microcode, many times slower. Measured here (2-core CPU, torch 2.14.1): LeNet-5 at D = 2 aimed at CR 500 went from
11 s per epoch to 158 s by epoch 16 as its pruned weights sank below 1e-38; a LeNet-5 step with 99.8% of its weight
products subnormal took 230 ms instead of 46 ms, and 48 ms with flushing on. Flushing changes nothing that matters:
such a weight is already dead (``defaults.DEAD_THRESHOLD`` is 1e-8), and the collapse zeroes it anyway.

The flag (SSE's FTZ/DAZ bits) belongs to a thread, and on Linux a new thread copies its creator's. torch's
intra-op pool starts its threads at the first parallel operation, so a process sets it before anything else
(``dwf`` and the Celery worker do), and ``Trainer.fit`` sets it again for its own thread.
"""

from __future__ import annotations

import torch


def flushing() -> bool:
    """Whether this thread flushes subnormal floats to zero (probed: a subnormal times one)."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * torch.tensor([1.0])).item() == 0.0)


def flush_denormals(on: bool = True) -> bool:
    """Turn flush-to-zero on (or off) for this thread and the threads it starts later; False where unsupported."""
    return bool(torch.set_flush_denormal(on))
