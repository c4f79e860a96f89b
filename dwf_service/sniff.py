"""Upload format detection and safety checks from the bytes alone, without torch or onnx (the API never imports them).

``sniff`` names a format from the first bytes (and a zip's member names). ``inspect_upload`` adds what can be
refused at upload, before a job exists, all without decoding any payload:

- code formats (pickle, ``torch.save`` zips, TorchScript, ``torch.export`` ``.pt2``) and pickle/TorchScript
  extensions: 415 ``unsafe_format``; a format the purpose does not accept: 415 ``unsupported_format``;
- ONNX that keeps tensors in external data files: 415 ``onnx_external_data`` (found by walking the protobuf
  structure and seeking over payloads);
- safetensors whose header is malformed, too large, overlapping or has holes: 422 ``corrupt_file`` / 413
  ``too_large`` (dwf_core's bounded header parser, which reads the header only);
- a Hugging Face ``config.json`` (a JSON object, format ``hf-config``) that is not valid JSON, lacks ``model_type``
  (422), is over 4 MiB (413), names remote code with ``auto_map`` (415 ``remote_code_refused``) or asks for a
  download or quantization (422 ``hf_config_unsupported``) (dwf_core.hf_config; whether transformers knows the
  ``model_type`` is the worker's check);
- zip and plain tar archives with too many members, too many bytes, bomb ratios, escaping paths or links:
  422 ``archive_unsafe`` / 413 ``too_large`` (central directory / member headers only).

What needs the model or the tensor values (unexpected keys, shapes, NaN/Inf) or decompression (tar.gz)
is checked by the worker's validation step, which fails the job fast with the same kind of typed error.
"""

from __future__ import annotations

import os
import struct
from pathlib import PurePosixPath
from typing import BinaryIO

from dwf_core.archives import ArchiveLimits, ArchiveSummary, check_tar_stream, check_zip_stream
from dwf_core.errors import DwfError
from dwf_core.hf_config import FORMAT_HF_CONFIG, MAX_CONFIG_BYTES, looks_like_json_object, parse_config
from dwf_core.safetensors_header import DTYPE_ITEMSIZE, parse_safetensors_header

# Formats that execute code when loaded: refused at upload, whatever the purpose.
UNSAFE = frozenset({"pickle", "torch-zip", "torchscript", "pt2"})
# Extensions that always mean pickle or TorchScript, whatever the bytes look like (as dwf_core.intake).
UNSAFE_EXTENSIONS = frozenset({".pt", ".pth", ".pt2", ".pkl", ".pickle", ".ckpt", ".jit", ".torchscript"})
ACCEPTED = {
    "model": frozenset({"onnx", FORMAT_HF_CONFIG}),
    "weights": frozenset({"safetensors"}),
    "dataset": frozenset({"npz", "safetensors", "csv", "zip", "tar", "tar.gz", "gzip"}),
}
HINTS = {
    "model": "a model must be a self-contained ONNX graph (.onnx, exported with external_data=False) or a Hugging "
    "Face transformers config.json",
    "weights": "weights must be a .safetensors file for a zoo, torchvision or config.json architecture",
    "dataset": "a dataset must be .npz, .safetensors, CSV, an image-folder .zip or a CIFAR tarball",
}
ACCEPTED_FORMATS = (
    "accepted formats: model = self-contained ONNX (.onnx) or transformers config.json (.json); weights = "
    "safetensors (.safetensors); "
    "dataset = .npz, .safetensors, CSV, image-folder .zip or CIFAR .tar/.tar.gz"
)
# The same numbers as dwf_core's DataLimits and ModelLimits defaults (a test keeps them equal).
ARCHIVE_LIMITS = ArchiveLimits()
MAX_HEADER_BYTES = 100 * 1024**2
MAX_TENSORS = 100_000
MAX_ELEMENTS = 2_000_000_000
# Protobuf fields visited when looking for ONNX external data; a bigger graph is left to the worker's check.
MAX_ONNX_FIELDS = 2_000_000

_STATUS = {
    "too_large": 413,
    "unsafe_format": 415,
    "unsupported_format": 415,
    "onnx_external_data": 415,
    "remote_code_refused": 415,
}


class UploadRefused(DwfError):
    """An upload refused before it is stored; ``status`` is the HTTP status to answer with."""

    code = "unsupported_format"

    def __init__(self, message: str, *, code: str, param: str | None = "file", status: int | None = None) -> None:
        super().__init__(message, code=code, param=param)
        self.status = status or _STATUS.get(code, 422)


def _zip_kind(names: list[str]) -> str:
    """Classify a zip from its member names (as dwf_core.intake.formats does for model files)."""
    basenames = {n.rsplit("/", 1)[-1] for n in names}
    if "archive_format" in basenames or any("/models/" in f"/{n}" and n.endswith(".json") for n in names):
        return "pt2"
    if "constants.pkl" in basenames or any("/code/" in f"/{n}" for n in names):
        return "torchscript"
    if "data.pkl" in basenames or any(n.endswith((".pkl", ".pickle")) for n in names):
        return "torch-zip"
    files = [n for n in names if not n.endswith("/")]
    if files and all(n.endswith(".npy") for n in files):
        return "npz"
    return "zip"


def _is_safetensors(head: bytes) -> bool:
    """u64 little-endian header length (so its high bytes are zero), then a JSON object."""
    if len(head) < 9 or head[8:9] != b"{" or head[6:8] != b"\x00\x00":
        return False
    n: int = struct.unpack("<Q", head[:8])[0]
    return n >= 2


def sniff(fh: BinaryIO, filename: str, size: int) -> str:
    """The format of the seekable stream ``fh`` (left at position 0): onnx, hf-config, safetensors, npz, csv, zip…

    A zip that breaks an archive limit is just "zip" here; ``inspect_upload`` says what is wrong with it.
    """
    fh.seek(0)
    head = fh.read(512)
    fh.seek(0)
    try:
        if head[:2] == b"PK":
            return _zip_kind(_zip_names(fh, size))
        if head[:2] == b"\x1f\x8b":
            return "tar.gz" if filename.lower().endswith((".tar.gz", ".tgz")) else "gzip"
        if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
            return "pickle"
        if head[:6] == b"\x93NUMPY":
            return "npy"
        if _is_safetensors(head):
            return "safetensors"
        if head[257:262] == b"ustar":
            return "tar"
        # Before CSV: a one-line JSON object has commas too. Its content is checked by inspect_upload.
        if looks_like_json_object(head):
            return FORMAT_HF_CONFIG
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


def _zip_names(fh: BinaryIO, size: int) -> list[str]:
    """Member names from the central directory; [] when it breaks a limit (inspect_upload then says which)."""
    try:
        return check_zip_stream(fh, size, "upload", ARCHIVE_LIMITS).names
    except DwfError:
        return []


# ----------------------------------------------------------------------------- ONNX external data


class _Window:
    """Random access to a file through one 64 KiB buffer (protobuf walking reads bytes one at a time)."""

    SIZE = 1 << 16

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh, self.size = fh, size
        self.start, self.buf = 0, b""

    def byte(self, pos: int) -> int:
        if not self.start <= pos < self.start + len(self.buf):
            self.fh.seek(pos)
            self.start, self.buf = pos, self.fh.read(self.SIZE)
            if not self.buf:
                raise _Malformed
        return self.buf[pos - self.start]

    def varint(self, pos: int) -> tuple[int, int]:
        value = 0
        for shift in range(0, 70, 7):
            b = self.byte(pos)
            pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value, pos
        raise _Malformed


class _Malformed(Exception):
    """Not a protobuf message we can walk: left to the worker's parser."""


class _Budget(Exception):
    """Too many fields to walk at upload: left to the worker's check."""


# Message type → {field number: type of the embedded message}; only paths that can hold a TensorProto.
_ONNX_MESSAGES: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 8, 13, 14, 1


def _external_tensor(win: _Window, kind: str, start: int, end: int, budget: list[int], depth: int) -> str | None:
    """The name of the first tensor stored in external data within message ``kind`` at [start, end)."""
    if depth > 64:
        raise _Malformed
    children = _ONNX_MESSAGES[kind]
    name, external = "", False
    pos = start
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Budget
        key, pos = win.varint(pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = win.varint(pos)
            if kind == "tensor" and number == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
                external = True
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = win.varint(pos)
            if pos + length > end:
                raise _Malformed
            if kind == "tensor" and number == _TENSOR_EXTERNAL_DATA:
                external = True
            elif kind == "tensor" and number == _TENSOR_NAME and length <= 256:
                name = bytes(win.byte(pos + i) for i in range(length)).decode("utf-8", "replace")
            elif number in children:
                found = _external_tensor(win, children[number], pos, pos + length, budget, depth + 1)
                if found is not None:
                    return found
            pos += length
        else:
            raise _Malformed
    if pos != end:
        raise _Malformed
    return (name or "<unnamed>") if external else None


def onnx_external_tensor(fh: BinaryIO, size: int) -> str | None:
    """The name of a tensor that an ONNX file keeps in external data, or None (also when it cannot tell)."""
    try:
        return _external_tensor(_Window(fh, size), "model", 0, size, [MAX_ONNX_FIELDS], 0)
    except (_Malformed, _Budget):
        return None
    finally:
        fh.seek(0)


# ----------------------------------------------------------------------------- the upload check


def _header_error(message: str, *, code: str, tensor: str | None) -> UploadRefused:
    return UploadRefused(f"safetensors header: {message}", code=code, param=tensor or "file")


def _check_archive(fh: BinaryIO, fmt: str, filename: str, size: int) -> ArchiveSummary | None:
    """Check a zip's central directory or a plain tar's member headers against ARCHIVE_LIMITS."""
    try:
        if fmt in ("zip", "npz"):
            return check_zip_stream(fh, size, filename, ARCHIVE_LIMITS)
        if fmt == "tar":
            return check_tar_stream(fh, filename, ARCHIVE_LIMITS)
    except DwfError as err:
        raise UploadRefused(err.message, code=err.code, param=err.param) from err
    finally:
        fh.seek(0)
    return None


def _check_hf_config(fh: BinaryIO, filename: str, size: int) -> None:
    """Parse a config.json upload (at most MAX_CONFIG_BYTES are read) and refuse what the worker would refuse."""
    try:
        if size > MAX_CONFIG_BYTES:
            raise UploadRefused(
                f"{filename}: {size} bytes, more than the {MAX_CONFIG_BYTES} bytes a model config.json may have",
                code="too_large",
            )
        parse_config(fh.read(size), filename)
    except DwfError as err:
        if isinstance(err, UploadRefused):
            raise
        # A key of the config (model_type, auto_map…) is named; anything else is about the file.
        param = err.param if err.param not in (None, "model") else "file"
        raise UploadRefused(err.message, code=err.code, param=param) from err
    finally:
        fh.seek(0)


def inspect_upload(fh: BinaryIO, filename: str, purpose: str) -> str:
    """The format of an upload for ``purpose``, or UploadRefused saying why it cannot be accepted.

    Args:
        fh: The uploaded bytes, seekable (left at position 0); the size is measured, not taken from headers.
        filename: The client's file name (its extension is checked too).
        purpose: ``model``, ``weights`` or ``dataset``.

    Raises:
        UploadRefused: with ``status`` 415 (``unsafe_format``, ``unsupported_format``, ``onnx_external_data``,
            ``remote_code_refused``), 413 (``too_large``) or 422 (``archive_unsafe``, ``corrupt_file``,
            ``dtype_not_allowed``, ``hf_config_invalid``, ``hf_config_unsupported``).
    """
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    fmt = sniff(fh, filename, size)
    if fmt in UNSAFE:
        raise UploadRefused(
            f"{filename}: {fmt} files can run code when loaded and are never opened; {ACCEPTED_FORMATS}",
            code="unsafe_format",
        )
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix in UNSAFE_EXTENSIONS and fmt not in ("onnx", "safetensors"):
        raise UploadRefused(
            f"{filename}: {suffix} is a PyTorch pickle/TorchScript extension, which is never opened; "
            f"{ACCEPTED_FORMATS}",
            code="unsafe_format",
        )
    _check_archive(fh, fmt, filename, size)
    if fmt == "safetensors":
        try:
            parse_safetensors_header(
                fh,
                size,
                error=_header_error,
                allowed_dtypes=DTYPE_ITEMSIZE.keys(),
                max_header_bytes=MAX_HEADER_BYTES,
                max_tensors=MAX_TENSORS,
                max_elements=MAX_ELEMENTS,
            )
        finally:
            fh.seek(0)
    if fmt not in ACCEPTED[purpose]:
        raise UploadRefused(
            f"{filename}: detected {fmt}; {HINTS[purpose]}; {ACCEPTED_FORMATS}", code="unsupported_format"
        )
    if fmt == FORMAT_HF_CONFIG:
        _check_hf_config(fh, filename, size)
    if fmt == "onnx":
        tensor = onnx_external_tensor(fh, size)
        if tensor is not None:
            raise UploadRefused(
                f"{filename}: tensor {tensor!r} is stored in an external data file, which the service never reads; "
                "re-export as one self-contained file (torch.onnx.export(..., external_data=False) or "
                "onnx.save_model(model, path, save_as_external_data=False))",
                code="onnx_external_data",
            )
    return fmt
