"""T13 hostile model files (reliability-tests.md §6), through the API and the worker's validation step.

Code formats (pickle, ``torch.save`` zips, TorchScript, ``.pt2``) and ONNX with external data are refused at
upload with 415 and the accepted formats; malformed safetensors headers and unsafe archives with a typed 4xx;
what only the model or the values reveal (NaN/Inf, unexpected keys, oversized shapes) fails the job fast in
validation with a typed error. A pickle whose ``__reduce__`` writes a marker file never runs: the marker is
asserted absent after every case, including when the bytes are slipped past the upload check into storage.
After each hostile job the same worker code validates a good job (no crash, keeps serving).
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import struct
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save as save_safetensors
from torch import nn

from dwf_core.intake import build_model
from dwf_service import jobs, runner
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import File, Job

ACCEPTED = ("accepted formats", ".onnx", ".safetensors")
MIB = 2**20


class _Exec:
    """Pickles to ``exec(code)``: loading it with pickle or torch.load(weights_only=False) runs the code."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """The file a hostile pickle would write; every test asserts it never appears."""
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a hostile pickle was executed"


def _writes_marker(marker: Path) -> _Exec:
    return _Exec(f"open({str(marker)!r}, 'w').write('pwned')")


def pickle_bytes(marker: Path, protocol: int = 4) -> bytes:
    return pickle.dumps(_writes_marker(marker), protocol=protocol)


def torch_zip_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": _writes_marker(marker)}, buf)
    return buf.getvalue()


def torchscript_bytes() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.save is deprecated, and still what users upload
        torch.jit.save(torch.jit.script(nn.Linear(2, 2)), buf)
    return buf.getvalue()


def pt2_bytes() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(nn.Linear(2, 2), (torch.zeros(1, 2),)), buf)
    return buf.getvalue()


def test_the_pickle_payload_really_calls_exec(marker: Path) -> None:
    """The payloads are live (checked statically, never by loading them): they import and call exec."""
    for payload in (pickle_bytes(marker), pickle_bytes(marker, protocol=2)):
        ops = [(op.name, arg) for op, arg, _pos in pickletools.genops(payload)]
        names = [op for op, _ in ops]
        assert "REDUCE" in names and ("STACK_GLOBAL" in names or "GLOBAL" in names)
        assert any(arg in ("exec", "builtins exec", "__builtin__ exec") for _, arg in ops)
    with zipfile.ZipFile(io.BytesIO(torch_zip_bytes(marker))) as zf:
        data_pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        assert b"exec" in zf.read(data_pkl)


# ----------------------------------------------------------------------------- refused at upload: 415


@pytest.fixture(scope="module")
def code_files() -> dict[str, bytes]:
    """TorchScript and torch.export archives (slow to build, so once per module)."""
    return {"torchscript": torchscript_bytes(), "pt2": pt2_bytes()}


CODE_CASES = [
    ("evil.pt", "pickle", "weights"),
    ("evil.pkl", "pickle", "model"),
    ("weights.safetensors", "pickle", "weights"),
    ("data.csv", "pickle-v2", "dataset"),
    ("model.pt", "torch-zip", "weights"),
    ("model.bin", "torch-zip", "model"),
    ("model.zip", "torch-zip", "dataset"),
    ("scripted.pt", "torchscript", "model"),
    ("scripted.zip", "torchscript", "dataset"),
    ("exported.pt2", "pt2", "model"),
    ("exported.zip", "pt2", "dataset"),
    ("mystery.pth", "unknown-bytes", "weights"),
]


@pytest.mark.parametrize(("name", "kind", "purpose"), CODE_CASES)
def test_code_formats_are_415_without_loading(
    client: TestClient, marker: Path, code_files: dict[str, bytes], name: str, kind: str, purpose: str
) -> None:
    payload = {
        "pickle": lambda: pickle_bytes(marker),
        "pickle-v2": lambda: pickle_bytes(marker, protocol=2),
        "torch-zip": lambda: torch_zip_bytes(marker),
        "torchscript": lambda: code_files["torchscript"],
        "pt2": lambda: code_files["pt2"],
        "unknown-bytes": lambda: b"\x00\x01\x02" * 100,
    }[kind]()
    resp = client.post("/v1/files", files={"file": (name, payload)}, data={"purpose": purpose})
    assert resp.status_code == 415, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "unsafe_format", "file")
    assert all(word in error["message"] for word in ACCEPTED), error["message"]
    assert client.get("/v1/files").json()["data"] == []


def onnx_bytes(*, external: str | None = None, where: str = "initializer") -> bytes:
    """A tiny MatMul graph; ``external`` moves its weight (an initializer or a Constant) to that data file."""
    weight = numpy_helper.from_array(np.ones((64, 2), np.float32), "W")
    if external is not None:
        onnx.external_data_helper.set_external_data(weight, location=external, offset=0, length=512)
        weight.ClearField("raw_data")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    if where == "initializer":
        nodes, inits = [helper.make_node("MatMul", ["x", "W"], ["y"])], [weight]
    else:
        nodes = [helper.make_node("Constant", [], ["W"], value=weight), helper.make_node("MatMul", ["x", "W"], ["y"])]
        inits = []
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.mark.parametrize(
    ("external", "where"),
    [("weights.bin", "initializer"), ("../../../../etc/passwd", "initializer"), ("w.bin", "constant")],
    ids=["side-file", "traversal", "constant-attribute"],
)
def test_onnx_with_external_data_is_415(client: TestClient, external: str, where: str) -> None:
    resp = client.post(
        "/v1/files", files={"file": ("m.onnx", onnx_bytes(external=external, where=where))}, data={"purpose": "model"}
    )
    assert resp.status_code == 415, resp.text
    error = resp.json()["error"]
    assert (error["code"], error["param"]) == ("onnx_external_data", "file")
    assert "'W'" in error["message"] and "external_data=False" in error["message"]
    assert client.get("/v1/files").json()["data"] == []


def test_self_contained_onnx_is_accepted(client: TestClient) -> None:
    resp = client.post("/v1/files", files={"file": ("m.onnx", onnx_bytes())}, data={"purpose": "model"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["format"] == "onnx"


# ----------------------------------------------------------------------------- safetensors headers: 413/422


def safetensors_raw(header: dict[str, Any] | bytes, buffer: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + buffer


F32x2 = {"dtype": "F32", "shape": [2]}
HEADER_CASES = {
    "huge-header": (safetensors_raw({"a": {**F32x2, "data_offsets": [0, 8]}}, bytes(8), length=200 * MIB), 413),
    "header-past-eof": (safetensors_raw({"a": {**F32x2, "data_offsets": [0, 8]}}, bytes(8), length=50 * MIB), 422),
    "overlapping": (
        safetensors_raw({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [4, 12]}}, bytes(12)),
        422,
    ),
    "hole": (
        safetensors_raw({"a": {**F32x2, "data_offsets": [0, 8]}, "b": {**F32x2, "data_offsets": [12, 20]}}, bytes(20)),
        422,
    ),
    "outside-buffer": (safetensors_raw({"a": {**F32x2, "data_offsets": [0, 4096]}}, bytes(8)), 422),
    "duplicate-key": (
        safetensors_raw(
            b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],'
            b'"data_offsets":[0,8]}}',
            bytes(8),
        ),
        422,
    ),
    "nan-literal": (safetensors_raw(b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}', bytes(8)), 422),
    "shape-vs-bytes": (
        safetensors_raw({"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}, bytes(8)),
        422,
    ),
    "bad-dtype": (safetensors_raw({"a": {"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}}, bytes(8)), 422),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
@pytest.mark.parametrize("purpose", ["weights", "dataset"])
def test_malformed_safetensors_headers_are_refused_at_upload(client: TestClient, case: str, purpose: str) -> None:
    payload, status = HEADER_CASES[case]
    resp = client.post("/v1/files", files={"file": ("w.safetensors", payload)}, data={"purpose": purpose})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] in ("too_large", "corrupt_file", "dtype_not_allowed")
    assert error["message"].startswith("safetensors header: ")
    assert client.get("/v1/files").json()["data"] == []


# ----------------------------------------------------------------------------- archives at upload


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/1.png", b"x")
        link = zipfile.ZipInfo("a/2.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    return buf.getvalue()


def _declares(size: int) -> bytes:
    """A zip whose 1 KB member declares ``size`` bytes uncompressed in its central directory."""
    data = bytearray(_zip({"a/1.png": b"\0" * 1000}, zipfile.ZIP_DEFLATED))
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<L", data, central + 24, size)
    return bytes(data)


ARCHIVE_CASES = {
    "dotdot": (_zip({"a/1.png": b"x", "../evil.png": b"x"}), 422, "archive_unsafe", "../evil.png"),
    "absolute": (_zip({"/etc/cron.d/x": b"x"}), 422, "archive_unsafe", "/etc/cron.d/x"),
    "symlink": (_symlink_zip(), 422, "archive_unsafe", "a/2.png"),
    "bomb-ratio": (_zip({"a/bomb.png": b"\0" * 4 * MIB}, zipfile.ZIP_DEFLATED), 422, "archive_unsafe", "a/bomb.png"),
    "declares-4gb": (_declares(0xFFFFFFF0), 422, "archive_unsafe", "a/1.png"),
}


@pytest.mark.parametrize("case", list(ARCHIVE_CASES))
def test_unsafe_archives_are_refused_at_upload(client: TestClient, case: str) -> None:
    payload, status, code, param = ARCHIVE_CASES[case]
    resp = client.post("/v1/files", files={"file": ("images.zip", payload)}, data={"purpose": "dataset"})
    assert resp.status_code == status, resp.text
    assert (resp.json()["error"]["code"], resp.json()["error"]["param"]) == (code, param)
    assert client.get("/v1/files").json()["data"] == []


def test_torch_zip_declaring_10_gb_is_refused(client: TestClient, marker: Path) -> None:
    """T13 (2): a .pt zip whose 1 KB member declares 10 GB is refused (never opened, never inflated)."""
    data = bytearray(torch_zip_bytes(marker))
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<L", data, central + 24, 0xFFFFFFFF)  # as large as a 32-bit field can say
    resp = client.post("/v1/files", files={"file": ("bomb.pt", bytes(data))}, data={"purpose": "weights"})
    assert 400 <= resp.status_code < 500 and resp.json()["error"]["code"] in ("unsafe_format", "archive_unsafe")


def test_tar_with_symlink_is_refused_at_upload(client: TestClient) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(link)
    resp = client.post("/v1/files", files={"file": ("c.tar", buf.getvalue())}, data={"purpose": "dataset"})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "archive_unsafe"


# ----------------------------------------------------------------------------- refused by the worker


def dataset_npz() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(
        buf,
        x_train=rng.integers(0, 255, (40, 1, 8, 8), dtype=np.uint8),
        y_train=np.arange(40, dtype=np.int64) % 2,
        x_test=rng.integers(0, 255, (10, 1, 8, 8), dtype=np.uint8),
        y_test=np.arange(10, dtype=np.int64) % 2,
    )
    return buf.getvalue()


def lenet_state() -> dict[str, torch.Tensor]:
    """The state dict the worker builds for lenet_300_100 on 1×8×8 inputs with 2 classes."""
    model = build_model("lenet_300_100", num_classes=2, in_channels=1, input_shape=(1, 8, 8))
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _with(state: dict[str, torch.Tensor], change: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    state = dict(state)
    change(state)
    return save_safetensors(state)


def _nan(state: dict[str, torch.Tensor]) -> None:
    state["fc2.weight"] = state["fc2.weight"].clone()
    state["fc2.weight"][3, 5] = float("nan")


def _inf(state: dict[str, torch.Tensor]) -> None:
    state["fc3.bias"] = torch.tensor([0.0, float("-inf")])


def _extra_key(state: dict[str, torch.Tensor]) -> None:
    state["backdoor.weight"] = torch.zeros(4)


def _oversized(state: dict[str, torch.Tensor]) -> None:
    state["fc1.weight"] = torch.zeros(600, 64)


def _dtype(state: dict[str, torch.Tensor]) -> None:
    state["fc1.bias"] = state["fc1.bias"].to(torch.int32)


WORKER_CASES = {
    "nan": (_nan, "non_finite", "fc2.weight"),
    "inf": (_inf, "non_finite", "fc3.bias"),
    "unexpected-keys": (_extra_key, "unexpected_keys", "backdoor.weight"),
    "oversized-shape": (_oversized, "shape_mismatch", "fc1.weight"),
    "dtype": (_dtype, "dtype_mismatch", "fc1.bias"),
}


def _upload(client: TestClient, name: str, payload: bytes, purpose: str) -> str:
    resp = client.post("/v1/files", files={"file": (name, payload)}, data={"purpose": purpose})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _submit(client: TestClient, dataset_id: str, *, weights_id: str | None = None, model_id: str | None = None) -> str:
    body: dict[str, Any] = {"dataset": {"file_id": dataset_id}, "method": {"epochs": 1}}
    if model_id is not None:
        body["model"] = {"file_id": model_id}
    else:
        body["model"], body["weights_file_id"] = {"name": "lenet_300_100"}, weights_id
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def _validate(ctx: ServiceContext, client: TestClient, job_id: str) -> dict[str, Any]:
    """Run the worker's validation task in this process (it must return, whatever the files hold)."""
    runner.validate_job(ctx, job_id)
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def _replace_blob(ctx: ServiceContext, file_id: str, payload: bytes) -> None:
    """Swap a stored file's bytes (and recorded size and sha256), as if it had slipped past the upload checks."""
    with session_scope(ctx.sessions) as session:
        row = session.get(File, file_id)
        assert row is not None
        size, sha256 = ctx.storage.put_stream(row.storage_key, io.BytesIO(payload))
        row.bytes, row.sha256 = size, sha256


@pytest.fixture
def good_weights() -> bytes:
    return save_safetensors(lenet_state())


@pytest.mark.parametrize("case", list(WORKER_CASES))
def test_bad_weights_fail_the_job_fast_and_the_worker_keeps_serving(
    client: TestClient, ctx: ServiceContext, good_weights: bytes, case: str
) -> None:
    change, code, param = WORKER_CASES[case]
    dataset_id = _upload(client, "d.npz", dataset_npz(), "dataset")
    bad_id = _upload(client, "w.safetensors", _with(lenet_state(), change), "weights")  # a valid header
    job = _validate(ctx, client, _submit(client, dataset_id, weights_id=bad_id))
    assert job["status"] == "failed"
    assert (job["error"]["code"], job["error"]["param"]) == (code, param), job["error"]
    # The next job is served by the same worker code as if nothing happened.
    good_id = _upload(client, "good.safetensors", good_weights, "weights")
    assert _validate(ctx, client, _submit(client, dataset_id, weights_id=good_id))["status"] == "queued"


def test_valid_safetensors_control_upload_validates(
    client: TestClient, ctx: ServiceContext, good_weights: bytes
) -> None:
    dataset_id = _upload(client, "d.npz", dataset_npz(), "dataset")
    resp = client.post("/v1/files", files={"file": ("w.safetensors", good_weights)}, data={"purpose": "weights"})
    assert resp.status_code == 200 and resp.json()["format"] == "safetensors"
    job = _validate(ctx, client, _submit(client, dataset_id, weights_id=resp.json()["id"]))
    assert job["status"] == "queued" and job["error"] is None


@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
def test_pickle_slipped_into_storage_is_never_loaded_by_the_worker(
    client: TestClient, ctx: ServiceContext, marker: Path, good_weights: bytes, kind: str
) -> None:
    """Defence in depth: even if the upload check were bypassed, validation refuses the bytes unopened."""
    dataset_id = _upload(client, "d.npz", dataset_npz(), "dataset")
    weights_id = _upload(client, "w.safetensors", good_weights, "weights")
    _replace_blob(ctx, weights_id, pickle_bytes(marker) if kind == "pickle" else torch_zip_bytes(marker))
    job = _validate(ctx, client, _submit(client, dataset_id, weights_id=weights_id))
    assert job["status"] == "failed" and job["error"]["code"] == "unsupported_format", job["error"]
    assert "safetensors" in job["error"]["message"]
    good_id = _upload(client, "good.safetensors", good_weights, "weights")
    assert _validate(ctx, client, _submit(client, dataset_id, weights_id=good_id))["status"] == "queued"


def test_onnx_external_data_slipped_into_storage_fails_the_job(client: TestClient, ctx: ServiceContext) -> None:
    dataset_id = _upload(client, "d.npz", dataset_npz(), "dataset")
    model_id = _upload(client, "m.onnx", onnx_bytes(), "model")
    _replace_blob(ctx, model_id, onnx_bytes(external="../../../../etc/passwd"))
    job = _validate(ctx, client, _submit(client, dataset_id, model_id=model_id))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "onnx_external_data", job["error"]
    assert "'W'" in job["error"]["message"] and "external_data=False" in job["error"]["message"]
    with ctx.sessions() as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.status == jobs.FAILED


def _tar_gz(member: str, kind: bytes, link: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.type, info.linkname = kind, link
        if kind == tarfile.REGTYPE:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        else:
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("member", "kind", "link"),
    [
        ("cifar-10-batches-bin/data_batch_1.bin", tarfile.SYMTYPE, "/etc/shadow"),
        ("cifar-10-batches-bin/data_batch_1.bin", tarfile.LNKTYPE, "../../../etc/shadow"),
        ("../../cifar-10-batches-bin/data_batch_1.bin", tarfile.REGTYPE, ""),
    ],
    ids=["symlink", "hardlink", "dotdot"],
)
def test_gzipped_tar_is_checked_by_the_worker_before_any_member_is_read(
    client: TestClient, ctx: ServiceContext, member: str, kind: bytes, link: str
) -> None:
    """A .tar.gz is not decompressed at upload; validation checks its members first and fails the job fast."""
    dataset_id = _upload(client, "cifar-10-binary.tar.gz", _tar_gz(member, kind, link), "dataset")
    resp = client.post(
        "/v1/jobs", json={"model": {"name": "lenet5"}, "dataset": {"file_id": dataset_id}, "method": {"epochs": 1}}
    )
    assert resp.status_code == 200, resp.text
    job = _validate(ctx, client, resp.json()["id"])
    assert job["status"] == "failed"
    assert (job["error"]["code"], job["error"]["param"]) == ("archive_unsafe", member), job["error"]


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def test_all_hostile_uploads_together_leave_no_marker_and_little_memory(
    client: TestClient, marker: Path, code_files: dict[str, bytes]
) -> None:
    before = _rss()
    payloads = [pickle_bytes(marker), torch_zip_bytes(marker), code_files["torchscript"], code_files["pt2"]]
    payloads += [p for p, _status in HEADER_CASES.values()] + [c[0] for c in ARCHIVE_CASES.values()]
    for i, payload in enumerate(payloads * 3):
        resp = client.post("/v1/files", files={"file": (f"f{i}.bin", payload)}, data={"purpose": "weights"})
        assert 400 <= resp.status_code < 500, resp.text
    assert _rss() - before < 100 * MIB
    assert client.get("/v1/files").json()["data"] == []


# ----------------------------------------------------------------------------- a real worker process


def _descendants(pid: int) -> set[int]:
    """PIDs below ``pid`` (the embedded worker and its pool processes)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found |= {int(c) for c in children}
        todo += [int(c) for c in children]
    return found


@pytest.mark.slow
def test_real_worker_fails_hostile_jobs_fast_and_serves_the_next(tmp_path: Path, marker: Path) -> None:
    """``dwf serve`` (uvicorn + one Celery worker): hostile jobs fail fast, the same worker processes succeed next."""
    from tests.e2e.test_embedded import Server
    from tests.service_helpers import upload

    files = tmp_path / "files"
    files.mkdir()
    (files / "d.npz").write_bytes(dataset_npz())
    (files / "good.safetensors").write_bytes(save_safetensors(lenet_state()))
    for case, (change, _code, _param) in WORKER_CASES.items():
        (files / f"{case}.safetensors").write_bytes(_with(lenet_state(), change))
    srv = Server(tmp_path / "data")
    srv.start()
    try:
        assert srv.proc is not None
        workers = _descendants(srv.proc.pid)
        client = srv.client
        refused = client.post(
            "/v1/files", files={"file": ("evil.pt", pickle_bytes(marker))}, data={"purpose": "weights"}
        )
        assert refused.status_code == 415 and refused.json()["error"]["code"] == "unsafe_format"
        dataset_id = upload(client, files / "d.npz", "dataset")

        def submit(weights: str) -> str:
            weights_id = upload(client, files / weights, "weights")
            body = {
                "model": {"name": "lenet_300_100"},
                "weights_file_id": weights_id,
                "dataset": {"file_id": dataset_id},
                "method": {"epochs": 1, "batch_size": 16},
            }
            resp = client.post("/v1/jobs", json=body)
            assert resp.status_code == 200, resp.text
            return str(resp.json()["id"])

        for case, (_change, code, param) in WORKER_CASES.items():
            started = time.monotonic()
            job = srv.wait(submit(f"{case}.safetensors"), timeout=90)
            assert job["status"] == "failed" and (job["error"]["code"], job["error"]["param"]) == (code, param), job
            assert job["attempts"] == 1 and time.monotonic() - started < 60
        job = srv.wait(submit("good.safetensors"), timeout=180)
        assert job["status"] == "succeeded", job
        assert _descendants(srv.proc.pid) == workers, "a worker process died or was replaced"
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
