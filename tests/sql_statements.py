"""Recording the SQL statements an engine executes, for tests that pin how many queries a code path issues."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event


@contextmanager
def _listening(engine: Engine, record: Callable[[str, Any], None]) -> Iterator[None]:
    def before(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, _executemany: bool) -> None:
        record(" ".join(statement.split()), params)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)


@contextmanager
def recorded_statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL text of every statement ``engine`` sends while the block runs (a list filled as they go)."""
    statements: list[str] = []
    with _listening(engine, lambda sql, _params: statements.append(sql)):
        yield statements


@contextmanager
def recorded_executions(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """(SQL text, parameters) of every statement ``engine`` sends while the block runs."""
    executions: list[tuple[str, Any]] = []
    with _listening(engine, lambda sql, params: executions.append((sql, params))):
        yield executions


def verbs(statements: list[str]) -> list[str]:
    """Each statement's verb and table: ``SELECT jobs`` (its FROM), ``UPDATE jobs``, ``INSERT job_events``…"""
    out: list[str] = []
    for sql in statements:
        words = sql.split()
        verb = words[0].upper()
        if verb == "SELECT":
            table = words[words.index("FROM") + 1] if "FROM" in words else ""
        elif verb == "UPDATE":
            table = words[1]
        elif verb in ("INSERT", "DELETE"):
            table = words[2]
        else:
            table = ""
        out.append(f"{verb} {table}".strip())
    return out
