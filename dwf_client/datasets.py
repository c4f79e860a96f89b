"""Client-side dataset conversion: an MNIST-style IDX folder into the .npz the API accepts.

numpy and dwf_core (its safe IDX reader) are imported only when a conversion is asked for, so the SDK itself needs
neither.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dwf_client.errors import DwfError

IDX_PREFIX = "mnist-idx:"


class DatasetConversionError(DwfError):
    """The IDX folder could not be read or converted."""


def write_npz(out: Path, arrays: Mapping[str, Any], *, compress: bool = True) -> Path:
    """``numpy.savez(_compressed)``, but with members marked as regular files (mode 0644, as ``zip`` writes them).

    numpy leaves the file-type bits of the zip members unset; a strict archive check on the server may refuse that.
    """
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", compression=method, allowZip64=True) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
    return out


def idx_to_npz(idx_dir: Path, out: Path, *, n_train: int | None = None, n_test: int | None = None) -> Path:
    """Write ``x_train, y_train, x_test, y_test`` (uint8 N×1×H×W images, int64 labels) of ``idx_dir`` to ``out``."""
    try:
        import numpy as np

        from dwf_core.data.common import ByteBudget, DataLimits
        from dwf_core.data.idx import read_idx_dir
        from dwf_core.errors import DwfError as CoreError
    except ImportError as exc:  # pragma: no cover - the SDK installed without the dwf package
        raise DatasetConversionError(f"{IDX_PREFIX} needs numpy and the dwf package (dwf_core): {exc}") from exc
    limits = DataLimits()
    try:
        raw = read_idx_dir(Path(idx_dir), limits, ByteBudget(limits.max_uncompressed_bytes))
    except CoreError as exc:
        raise DatasetConversionError(str(exc)) from None
    arrays = {
        "x_train": raw.x["train"][:n_train],
        "y_train": raw.y["train"][:n_train].astype(np.int64),
        "x_test": raw.x["test"][:n_test],
        "y_test": raw.y["test"][:n_test].astype(np.int64),
    }
    return write_npz(out, arrays)
