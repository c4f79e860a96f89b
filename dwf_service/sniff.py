"""Upload format detection from the first bytes, without torch or onnx (the API process never imports them)."""

from __future__ import annotations

import struct
import zipfile
from typing import BinaryIO

# Formats that execute code when loaded: refused at upload, whatever the purpose.
UNSAFE = frozenset({"pickle", "torch-zip", "torchscript"})
ACCEPTED = {
    "model": frozenset({"onnx"}),
    "weights": frozenset({"safetensors"}),
    "dataset": frozenset({"npz", "safetensors", "csv", "zip", "tar", "tar.gz", "gzip"}),
}
HINTS = {
    "model": "a model must be a self-contained ONNX graph (.onnx, exported with external_data=False)",
    "weights": "weights must be a .safetensors file for a zoo or torchvision architecture",
    "dataset": "a dataset must be .npz, .safetensors, CSV, an image-folder .zip or a CIFAR tarball",
}


def _zip_kind(fh: BinaryIO) -> str:
    try:
        with zipfile.ZipFile(fh) as zf:
            names = zf.namelist()[:100_000]
    except (zipfile.BadZipFile, OSError, ValueError):
        return "unknown"
    if any(n.endswith(("data.pkl", ".pkl")) for n in names):
        return "torch-zip"
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if names and all(n.endswith(".npy") for n in names if not n.endswith("/")):
        return "npz"
    return "zip"


def sniff(fh: BinaryIO, filename: str, size: int) -> str:
    """The format of the seekable stream ``fh`` (left at position 0): onnx, safetensors, npz, csv, zip…"""
    fh.seek(0)
    head = fh.read(512)
    fh.seek(0)
    try:
        if head[:2] == b"PK":
            return _zip_kind(fh)
        if head[:2] == b"\x1f\x8b":
            return "tar.gz" if filename.lower().endswith((".tar.gz", ".tgz")) else "gzip"
        if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
            return "pickle"
        if head[:6] == b"\x93NUMPY":
            return "npy"
        if len(head) >= 9:
            (n,) = struct.unpack("<Q", head[:8])
            if 2 <= n <= size - 8 and head[8:9] == b"{":
                return "safetensors"
        if head[257:262] == b"ustar":
            return "tar"
        # ModelProto's first field is ir_version (field 1, varint): tag byte 0x08, then a small version.
        if head[:1] == b"\x08" and len(head) > 1 and 1 <= head[1] <= 64:
            return "onnx"
        text = head.decode("utf-8")
        if "," in text.splitlines()[0] if text else False:
            return "csv"
    except UnicodeDecodeError:
        pass
    finally:
        fh.seek(0)
    return "unknown"
