"""Content-based model file format detection, and refusal of formats that execute code when loaded."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

from google.protobuf.descriptor import FieldDescriptor
from onnx import ModelProto

from dwf_core.errors import ModelError
from dwf_core.hf_config import FORMAT_HF_CONFIG, looks_like_json_object

FORMAT_ONNX = "onnx"
FORMAT_SAFETENSORS = "safetensors"
FORMAT_PICKLE = "pickle"
FORMAT_TORCHSCRIPT = "torchscript-zip"
FORMAT_PT2 = "pt2"
FORMAT_UNKNOWN = "unknown"

ACCEPTED_FORMATS_HINT = (
    "accepted formats: an ONNX graph (.onnx) for an architecture with weights, a Hugging Face transformers "
    "config.json (.json) for an architecture built into transformers, or safetensors (.safetensors) weights for "
    "a zoo/torchvision/config.json architecture"
)

# Extensions that always mean pickle or TorchScript, whatever the bytes look like.
UNSAFE_EXTENSIONS = frozenset({".pt", ".pth", ".pt2", ".pkl", ".pickle", ".ckpt", ".jit", ".torchscript"})

# Zip listings are read from the central directory only; a bomb of entries is not worth walking.
_MAX_ZIP_ENTRIES = 100_000
# Protobuf wire types of ModelProto's top-level fields, derived from onnx's own descriptor.
_VARINT, _LEN = 0, 2
_ONNX_WIRE_TYPES = {
    f.number: (
        _LEN
        if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE)
        else _VARINT
    )
    for f in ModelProto.DESCRIPTOR.fields
}
_ONNX_IR_VERSION_FIELD = ModelProto.DESCRIPTOR.fields_by_name["ir_version"].number
_ONNX_GRAPH_FIELD = ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_MAX_TOP_LEVEL_FIELDS = 1_000_000


def _read_varint(f: BinaryIO) -> int | None:
    """Read one protobuf base-128 varint, or None at EOF or if it is longer than 10 bytes."""
    value = 0
    for shift in range(0, 70, 7):
        b = f.read(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
    return None


def _looks_like_onnx(f: BinaryIO, size: int) -> bool:
    """Walk ModelProto's top-level fields (skipping payloads) and check they tile the file exactly."""
    f.seek(0)
    seen: set[int] = set()
    pos = 0
    for _ in range(_MAX_TOP_LEVEL_FIELDS):
        if pos == size:
            # A real model always has an IR version and a graph.
            return {_ONNX_IR_VERSION_FIELD, _ONNX_GRAPH_FIELD} <= seen
        key = _read_varint(f)
        if key is None:
            return False
        number, wire = key >> 3, key & 7
        if _ONNX_WIRE_TYPES.get(number) != wire:
            return False
        if wire == _VARINT:
            if _read_varint(f) is None:
                return False
        else:
            length = _read_varint(f)
            if length is None or f.tell() + length > size:
                return False
            f.seek(length, os.SEEK_CUR)
        seen.add(number)
        pos = f.tell()
    return False


def _zip_format(path: Path) -> str:
    """Classify a zip archive as TorchScript, torch.export .pt2, torch.save (pickle) or unknown."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > _MAX_ZIP_ENTRIES:
                return FORMAT_UNKNOWN
            names = [i.filename for i in infos]
    except (zipfile.BadZipFile, OSError, ValueError):
        return FORMAT_UNKNOWN
    basenames = {n.rsplit("/", 1)[-1] for n in names}
    if "archive_format" in basenames or any("/models/" in f"/{n}" and n.endswith(".json") for n in names):
        return FORMAT_PT2
    if "constants.pkl" in basenames or any("/code/" in f"/{n}" for n in names):
        return FORMAT_TORCHSCRIPT
    if "data.pkl" in basenames or any(n.endswith((".pkl", ".pickle")) for n in names):
        return FORMAT_PICKLE
    return FORMAT_UNKNOWN


def _stat_file(path: str | os.PathLike[str]) -> tuple[Path, int]:
    """Return the path and size of a regular file, or raise ModelError(code="not_found")."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ModelError(f"cannot read model file {p.name!r}: {exc.strerror}", code="not_found", param="path") from exc
    if not p.is_file():
        raise ModelError(f"{p.name!r} is not a regular file", code="not_found", param="path")
    return p, st.st_size


def detect_model_format(path: str | os.PathLike[str]) -> str:
    """Identify a model file's format from its bytes alone, never deserialising it.

    Args:
        path: File to inspect.

    Returns:
        ``"onnx"``, ``"safetensors"``, ``"hf-config"`` (a JSON object: a transformers config.json, checked
        when it is built), ``"pickle"`` (raw pickle or a ``torch.save`` zip),
        ``"torchscript-zip"``, ``"pt2"`` (a ``torch.export.save`` archive) or ``"unknown"``.

    Raises:
        ModelError: ``not_found`` if the path is not a readable regular file.
    """
    p, size = _stat_file(path)
    with p.open("rb") as f:
        head = f.read(64)
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            return FORMAT_PICKLE
        if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
            return _zip_format(p)
        if len(head) >= 9:
            (header_len,) = struct.unpack("<Q", head[:8])
            # safetensors: u64 header length, then a JSON object that fits in the file.
            if 2 <= header_len <= size - 8 and head[8:9] == b"{":
                return FORMAT_SAFETENSORS
        if looks_like_json_object(head):
            return FORMAT_HF_CONFIG
        if size > 0 and _looks_like_onnx(f, size):
            return FORMAT_ONNX
    return FORMAT_UNKNOWN


def refuse_unsafe(path: str | os.PathLike[str]) -> None:
    """Refuse pickle, ``torch.save``, TorchScript and ``.pt2`` files without loading them.

    Loading any of these runs code chosen by the file's author (pickle opcodes, TorchScript code,
    ``torch.export.load`` unpickling archive members), so user files in those formats are refused.

    Args:
        path: File to check; its extension and its leading bytes are both examined.

    Raises:
        ModelError: ``unsupported_format`` naming what was found and the accepted formats;
            ``not_found`` if the path is not a readable regular file.
    """
    p = Path(path)
    found = detect_model_format(p)
    if found in (FORMAT_PICKLE, FORMAT_TORCHSCRIPT, FORMAT_PT2):
        raise ModelError(
            f"{p.name!r} is a {found} file, which runs code when loaded and is never opened; {ACCEPTED_FORMATS_HINT}",
            code="unsupported_format",
            param="path",
        )
    if p.suffix.lower() in UNSAFE_EXTENSIONS and found not in (FORMAT_ONNX, FORMAT_SAFETENSORS):
        raise ModelError(
            f"{p.name!r} has a PyTorch pickle/TorchScript extension ({p.suffix}), which is never opened; "
            f"{ACCEPTED_FORMATS_HINT}",
            code="unsupported_format",
            param="path",
        )
