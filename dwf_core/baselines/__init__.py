"""Pruning baselines run through the same Trainer and data pipeline as DWF (``dwf train --method …``).

``dense`` trains the plain model (depth 1: w = ω1 with L2 decay 2λ); ``magnitude`` prunes it globally by
magnitude to the target sparsity; ``magnitude-ft`` then fine-tunes with the mask fixed; ``gmp`` prunes
gradually during training (Zhu & Gupta 2017); ``snip``, ``synflow`` and ``random`` prune at initialization
and train with the mask fixed. All prune exactly the tensors DWF factorizes. See ``dwf_core.baselines.run``.

This module imports nothing heavy, so the config can validate method names without a cycle.
"""

from __future__ import annotations

METHODS: tuple[str, ...] = ("dwf", "dense", "magnitude", "magnitude-ft", "gmp", "snip", "synflow", "random")
PRUNING_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in ("dwf", "dense"))
