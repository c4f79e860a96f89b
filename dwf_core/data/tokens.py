"""Token datasets: .npz files of integer token ids, and integer inputs for models that take them.

The system stays single-input: a token dataset's x is one int64 tensor, (N, L) of ids, or (N, 2, L) with the
ids stacked on a 0/1 attention mask; it is never normalized or converted to float. A model built for tokens
(dwf_core.intake.hf_source) unpacks it.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch

from dwf_core.data.common import SPLITS, Array, DatasetBundle
from dwf_core.errors import DatasetError

REQUIRED = ("input_ids_train", "labels_train", "input_ids_test", "labels_test")
OPTIONAL = (
    "input_ids_val",
    "labels_val",
    "attention_mask_train",
    "attention_mask_val",
    "attention_mask_test",
)
# Vocabularies are far smaller; the cap keeps uint64 ids from wrapping in int64 and keeps ids exact everywhere.
MAX_TOKEN_ID = 2**31 - 1
# float32 holds every integer up to 2**24 exactly: the largest x_* value that can go back to an integer model.
MAX_EXACT_FLOAT32_INT = 2**24


def is_token_layout(found: Collection[str]) -> bool:
    """True when an archive's arrays use the token names (input_ids_train, …) rather than x_train, …."""
    return any(name.startswith(("input_ids_", "attention_mask_", "labels_")) for name in found)


def check_token_names(found: Collection[str], filename: str) -> None:
    """Require the token arrays of every present split, and no x_*/y_* arrays next to them.

    Raises:
        DatasetError: ``mixed_layout`` or ``missing_array`` naming the offending array.
    """
    mixed = sorted(n for n in found if n.startswith(("x_", "y_")))
    if mixed:
        raise DatasetError(
            f"{filename}: has token arrays (input_ids_*, labels_*) and {mixed[0]!r}; use one layout: x_*/y_* for "
            "features or images, input_ids_*/labels_* (optionally attention_mask_*) for token ids",
            code="mixed_layout",
            param=mixed[0],
        )
    for key in REQUIRED:
        if key not in found:
            raise DatasetError(
                f"{filename}: no array named {key!r}; found {sorted(found)}, expected {', '.join(REQUIRED)} (and "
                "optionally input_ids_val, labels_val and attention_mask_<split> for every split)",
                code="missing_array",
                param=key,
            )
    if ("input_ids_val" in found) != ("labels_val" in found):
        missing = "labels_val" if "input_ids_val" in found else "input_ids_val"
        raise DatasetError(
            f"{filename}: has {'input_ids_val' if missing == 'labels_val' else 'labels_val'} but no {missing}; "
            "expected both or neither",
            code="missing_array",
            param=missing,
        )
    splits = [s for s in SPLITS if f"input_ids_{s}" in found]
    masked = [s for s in splits if f"attention_mask_{s}" in found]
    if masked and len(masked) != len(splits):
        missing = next(f"attention_mask_{s}" for s in splits if s not in masked)
        raise DatasetError(
            f"{filename}: has attention_mask_{masked[0]} but no {missing}; give a mask for every split or for none",
            code="missing_array",
            param=missing,
        )
    stray = sorted(
        n for n in found if n.startswith("attention_mask_") and n.removeprefix("attention_mask_") not in splits
    )
    if stray:
        raise DatasetError(
            f"{filename}: {stray[0]!r} has no matching input_ids array", code="missing_array", param=stray[0]
        )


def _first_bad(bad: Array) -> tuple[int, int]:
    """(sample, position) of the first True in a 2-D boolean array."""
    sample, position = divmod(int(np.argmax(bad)), int(bad.shape[1]))
    return sample, position


def token_inputs(ids: Array, mask: Array | None, split: str) -> Array:
    """Check one split's ids (and mask) and return its x: int64 (N, L), or (N, 2, L) with the mask stacked.

    Raises:
        DatasetError: ``bad_dtype``, ``shape_mismatch``, ``empty_split``, ``bad_token_ids``, ``bad_attention_mask``
            with ``param`` naming the array.
    """
    param = f"input_ids_{split}"
    if ids.dtype.kind not in "iu":
        raise DatasetError(
            f"{param}: dtype {ids.dtype}; token ids must be an integer array", code="bad_dtype", param=param
        )
    if ids.ndim != 2:
        raise DatasetError(
            f"{param}: shape {ids.shape}; expected (N, L): one row of L token ids per sample",
            code="shape_mismatch",
            param=param,
        )
    if ids.shape[0] == 0:
        raise DatasetError(f"{param}: split is empty; expected at least 1 sample", code="empty_split", param=param)
    if ids.shape[1] == 0:
        raise DatasetError(f"{param}: sequences of length 0; expected L >= 1", code="shape_mismatch", param=param)
    if ids.dtype.kind == "i" and (negative := ids < 0).any():
        i, j = _first_bad(negative)
        raise DatasetError(
            f"{param}: sample {i} position {j} is {int(ids[i, j])}; token ids must be >= 0",
            code="bad_token_ids",
            param=param,
        )
    if (huge := ids > MAX_TOKEN_ID).any():
        i, j = _first_bad(huge)
        raise DatasetError(
            f"{param}: sample {i} position {j} is {int(ids[i, j])}; token ids must be below 2**31",
            code="bad_token_ids",
            param=param,
        )
    x = ids.astype(np.int64)
    if mask is None:
        return x
    mparam = f"attention_mask_{split}"
    if mask.shape != ids.shape:
        raise DatasetError(
            f"{mparam}: shape {mask.shape} differs from {param}'s {ids.shape}; expected one 0/1 entry per token",
            code="shape_mismatch",
            param=mparam,
        )
    if mask.dtype.kind not in "biu":
        raise DatasetError(
            f"{mparam}: dtype {mask.dtype}; an attention mask must be bool or integer 0/1",
            code="bad_dtype",
            param=mparam,
        )
    if mask.dtype.kind != "b" and (bad := (mask != 0) & (mask != 1)).any():
        i, j = _first_bad(bad)
        raise DatasetError(
            f"{mparam}: sample {i} position {j} is {int(mask[i, j])}; an attention mask holds only 0 and 1",
            code="bad_attention_mask",
            param=mparam,
        )
    if (empty := ~mask.astype(bool).any(axis=1)).any():
        i = int(np.argmax(empty))
        raise DatasetError(
            f"{mparam}: sample {i} masks out every token; expected at least one 1 per sample",
            code="bad_attention_mask",
            param=mparam,
        )
    return np.stack([x, mask.astype(np.int64)], axis=1)


def token_ids(x: torch.Tensor) -> torch.Tensor:
    """The ids of a token x: (N, L) as it is, or plane 0 of (N, 2, L)."""
    return x if x.dim() == 2 else x[:, 0]


def max_token_id(data: DatasetBundle) -> int:
    """The largest token id in any split of a token dataset."""
    return max(int(token_ids(split.x).max()) for split in (data.train, data.val, data.test) if len(split))


def as_integer_inputs(data: DatasetBundle, model: str) -> None:
    """Turn a float dataset's whole-number x back into int64, in place, for a model that takes integers.

    ``x_*`` arrays are read as float32 (as features or images); token ids stored that way are exact up to 2**24
    and come back here. Values that were scaled (uint8 divided by 255), standardized or are not whole numbers
    cannot be ids: refused.

    Raises:
        DatasetError: ``integer_input_mismatch`` naming the split.
    """
    hint = (
        f"{model} takes integer inputs (token ids); store them as input_ids_train/labels_train/… arrays "
        "(int32/int64), which are kept as integers"
    )
    if data.normalization is not None:
        raise DatasetError(
            f"the dataset's x was standardized (normalize auto or standardize); {hint}, or pass normalize='none'",
            code="integer_input_mismatch",
            param="x_train",
        )
    converted = {}
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        x = split.x
        if x.is_floating_point():
            exact = not x.numel() or float(x.abs().max()) <= MAX_EXACT_FLOAT32_INT
            if not (exact and torch.equal(x, torch.round(x))):
                raise DatasetError(
                    f"x_{name}: holds values that are not whole numbers up to 2**24 (uint8 data is scaled by 1/255); "
                    + hint,
                    code="integer_input_mismatch",
                    param=f"x_{name}",
                )
        converted[name] = x.to(torch.int64)
    data.train.x, data.val.x, data.test.x = converted["train"], converted["val"], converted["test"]
