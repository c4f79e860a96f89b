"""Reader for CSV tables: numeric feature columns, a label column and an optional split column."""

from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

import numpy as np

from dwf_core.data.common import Array, ByteBudget, DataLimits, RawDataset, check_counts
from dwf_core.data.safety import check_file_size
from dwf_core.errors import DatasetError

# Accepted label column names, highest priority first: with `label` present, a column `y` is a feature.
LABEL_COLUMNS = ("label", "target", "class", "y")
SPLIT_COLUMN = "split"
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_DELIMITERS = ",;\t"
_INT = re.compile(r"^[+-]?\d+$")


def _delimiter(first_line: str) -> str | None:
    """The most frequent of , ; TAB in the header line, or None if it has none."""
    best = max(_DELIMITERS, key=first_line.count)
    return best if first_line.count(best) else None


def looks_like_csv(head: bytes) -> bool:
    """True when the leading bytes are UTF-8 text whose first line contains a delimiter."""
    if b"\x00" in head:
        return False
    try:
        # An incremental decoder tolerates a multi-byte character cut at the end of `head`.
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    lines = text.splitlines()
    return bool(lines) and _delimiter(lines[0]) is not None


def _label_ids(cells: list[str], lines: list[int], name: str) -> tuple[Array, list[str] | None]:
    """Turn label cells into class ids: integers as given, otherwise sorted class names."""
    for cell, line in zip(cells, lines, strict=True):
        if not cell:
            raise DatasetError(
                f"{name}: line {line} has an empty label; expected a class index or name",
                code="bad_labels",
                param="label",
            )
    if all(_INT.match(c) for c in cells):
        ids = np.array([int(c) for c in cells], dtype=np.int64)
        if (ids < 0).any():
            i = int(np.argmax(ids < 0))
            raise DatasetError(
                f"{name}: line {lines[i]} has label {cells[i]}; expected class indices >= 0",
                code="bad_labels",
                param="label",
            )
        return ids, None
    names = sorted(set(cells))
    index = {c: i for i, c in enumerate(names)}
    return np.array([index[c] for c in cells], dtype=np.int64), names


def _features(rows: list[list[str]], lines: list[int], columns: list[str], name: str) -> Array:
    """Parse the feature cells as float64, naming the first bad row and column on failure."""
    try:
        # numpy parses the strings in C; fall back to a Python scan only to locate a failure.
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(columns))
    except ValueError:
        pass
    for row, line in zip(rows, lines, strict=True):
        for cell, column in zip(row, columns, strict=True):
            try:
                float(cell)
            except ValueError:
                raise DatasetError(
                    f"{name}: line {line}, column {column!r} holds {cell!r}; expected a number",
                    code="bad_value",
                    param=column,
                ) from None
    raise DatasetError(f"{name}: feature cells are not all numbers", code="bad_value", param=name)


def read_csv(path: Path, limits: DataLimits, budget: ByteBudget) -> RawDataset:
    """Read a CSV table with a header row into splits (by the split column when present)."""
    name = path.name
    size = check_file_size(path, limits)
    budget.take(size, name)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{name}: not UTF-8 text ({exc}); expected a CSV file", code="unsupported_format", param=name
        ) from exc
    first = text.split("\n", 1)[0]
    delimiter = _delimiter(first)
    if delimiter is None:
        raise DatasetError(
            f"{name}: header line {first[:80]!r} has no ',', ';' or tab; expected a header row of column names",
            code="unsupported_format",
            param=name,
        )
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
        lower = [h.lower() for h in header]
        if len(set(lower)) != len(lower):
            dup = next(h for h in header if lower.count(h.lower()) > 1)
            raise DatasetError(f"{name}: column {dup!r} appears twice in the header", code="bad_csv", param=dup)
        label_name = next((c for c in LABEL_COLUMNS if c in lower), None)
        if label_name is None:
            raise DatasetError(
                f"{name}: header {header[:20]} has no label column; expected one named "
                f"{', '.join(LABEL_COLUMNS)} (case-insensitive)",
                code="missing_column",
                param="label",
            )
        label_col = lower.index(label_name)
        split_col = lower.index(SPLIT_COLUMN) if SPLIT_COLUMN in lower else None
        feature_cols = [i for i in range(len(header)) if i not in (label_col, split_col)]
        if not feature_cols:
            raise DatasetError(f"{name}: no feature columns besides the label", code="missing_column", param=name)
        check_counts(0, len(feature_cols), limits, name)
        columns = [header[i] for i in feature_cols]

        rows: list[list[str]] = []
        labels: list[str] = []
        splits: list[str] = []
        lines: list[int] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank lines, often a trailing newline
            if len(row) != len(header):
                raise DatasetError(
                    f"{name}: line {reader.line_num} has {len(row)} cells; expected {len(header)} like the header",
                    code="bad_csv",
                    param=name,
                )
            rows.append([row[i].strip() for i in feature_cols])
            labels.append(row[label_col].strip())
            if split_col is not None:
                value = row[split_col].strip().lower()
                if value not in SPLIT_VALUES:
                    raise DatasetError(
                        f"{name}: line {reader.line_num} has split {row[split_col]!r}; expected train, val or test",
                        code="bad_value",
                        param=header[split_col],
                    )
                splits.append(SPLIT_VALUES[value])
            lines.append(reader.line_num)
            if len(rows) > limits.max_samples:
                check_counts(len(rows), len(feature_cols), limits, name)
    except csv.Error as exc:
        raise DatasetError(
            f"{name}: malformed CSV at line {reader.line_num} ({exc})", code="bad_csv", param=name
        ) from exc
    if not rows:
        raise DatasetError(f"{name}: header but no data rows", code="empty_split", param=name)

    x = _features(rows, lines, columns, name)
    bad = ~np.isfinite(x) | (np.abs(x) > np.finfo(np.float32).max)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(
            f"{name}: line {lines[r]}, column {columns[c]!r} holds {rows[r][c]!r}; expected a finite number "
            "within float32 range",
            code="non_finite",
            param=columns[c],
        )
    y, class_names = _label_ids(labels, lines, name)
    raw = RawDataset(fmt="csv", x={}, y={}, class_names=class_names)
    if split_col is None:
        raw.x["train"], raw.y["train"] = x, y
        return raw
    tags = np.array(splits)
    for split in ("train", "val", "test"):
        mask = tags == split
        if mask.any():
            raw.x[split], raw.y[split] = x[mask], y[mask]
    if "train" not in raw.x:
        raise DatasetError(f"{name}: no rows with split 'train'", code="empty_split", param=header[split_col])
    return raw
