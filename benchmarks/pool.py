"""Run a table's cells in worker processes (spawned, one torch thread each), keeping the rows as they finish."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any, Protocol, TypeVar


class HasKey(Protocol):
    @property
    def key(self) -> str: ...


CellT = TypeVar("CellT", bound=HasKey)


def run_cells(
    todo: Sequence[CellT],
    work: Callable[[CellT], dict[str, Any]],
    jobs: int,
    on_row: Callable[[CellT, dict[str, Any]], None],
) -> int:
    """Run ``work(cell)`` for every cell in ``jobs`` processes; ``on_row`` gets each finished row (in the calling
    process, so it may write the results file). A failed cell is reported and skipped; returns how many failed."""
    failed = 0
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) as pool:
        pending: dict[Future[dict[str, Any]], CellT] = {pool.submit(work, cell): cell for cell in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = pending.pop(future)
                try:
                    row = future.result()
                except Exception as exc:  # the other cells go on
                    print(f"FAILED {cell.key}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                    failed += 1
                    continue
                on_row(cell, row)
    return failed
