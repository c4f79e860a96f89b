"""Tests of dwf_core.export: dense safetensors, ONNX export + onnxruntime check, atomic JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dwf_core.errors import ExportError
from dwf_core.export import (
    OnnxExportResult,
    export_onnx,
    load_sparse,
    save_dense,
    save_sparse,
    write_json_atomic,
)


def mlp() -> nn.Sequential:
    """A small MLP with 90 %-sparse first layer."""
    torch.manual_seed(0)
    first = nn.Linear(12, 32)
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), nn.Linear(32, 5))
    with torch.no_grad():
        first.weight[torch.rand_like(first.weight) < 0.9] = 0
    return model


def small_cnn() -> nn.Sequential:
    """Conv + BatchNorm + pooling + linear, with trained-looking BatchNorm statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    model.train()
    for _ in range(3):
        model(torch.randn(4, 3, 16, 16))
    return model


def files_in(directory: Path) -> list[str]:
    """Names of everything in a directory (temp files included)."""
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------------- dense


@pytest.mark.parametrize("factory", [mlp, small_cnn], ids=["mlp", "cnn_batchnorm"])
def test_save_dense_loads_strict(tmp_path: Path, factory: object) -> None:
    """The dense file loads with load_file + load_state_dict(strict=True), every tensor bit-equal."""
    model = factory()  # type: ignore[operator]
    path = tmp_path / "out" / "model.safetensors"
    written = save_dense(model, path)
    assert written == path.stat().st_size
    assert files_in(path.parent) == ["model.safetensors"]
    loaded = load_file(str(path))
    fresh = factory()  # type: ignore[operator]
    fresh.load_state_dict(loaded, strict=True)
    for key, value in model.state_dict().items():
        assert loaded[key].dtype == value.dtype
        assert torch.equal(loaded[key], value), key


def test_save_dense_batchnorm_buffers(tmp_path: Path) -> None:
    """Running stats and the int64 num_batches_tracked counter are saved."""
    model = small_cnn()
    save_dense(model, tmp_path / "m.safetensors")
    loaded = load_file(str(tmp_path / "m.safetensors"))
    assert loaded["1.num_batches_tracked"].dtype == torch.int64
    assert int(loaded["1.num_batches_tracked"]) == 3
    assert torch.equal(loaded["1.running_var"], model.state_dict()["1.running_var"])


def test_save_dense_tied_weights(tmp_path: Path) -> None:
    """Shared parameters are written under each key and load back strictly."""

    class Tied(nn.Module):
        """Encoder/decoder sharing one weight."""

        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(6, 6, bias=False)
            self.dec = nn.Linear(6, 6, bias=False)
            self.dec.weight = self.enc.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Apply both."""
            out: torch.Tensor = self.dec(self.enc(x))
            return out

    model = Tied()
    path = tmp_path / "tied.safetensors"
    save_dense(model, path)
    loaded = load_file(str(path))
    assert set(loaded) == {"enc.weight", "dec.weight"}
    Tied().load_state_dict(loaded, strict=True)


def test_save_dense_non_contiguous_and_overwrite(tmp_path: Path) -> None:
    """Transposed (non-contiguous) parameters are saved; saving twice replaces the file."""
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight = nn.Parameter(torch.randn(4, 3).t())
    path = tmp_path / "m.safetensors"
    save_dense(nn.Linear(4, 3), path)
    save_dense(model, path)
    assert torch.equal(load_file(str(path))["weight"], model.weight)
    assert files_in(tmp_path) == ["m.safetensors"]


def test_sparse_and_dense_agree(tmp_path: Path) -> None:
    """The sparse file of a model is smaller and restores the same state dict as the dense file."""
    model = mlp()
    dense_bytes = save_dense(model, tmp_path / "dense.safetensors")
    stats = save_sparse(model, tmp_path / "sparse.safetensors")
    assert stats.file_bytes < dense_bytes
    dense = load_file(str(tmp_path / "dense.safetensors"))
    sparse = load_sparse(tmp_path / "sparse.safetensors")
    assert dense.keys() == sparse.keys()
    assert all(torch.equal(dense[k], sparse[k]) for k in dense)


# ---------------------------------------------------------------------------------------------- onnx


def test_export_onnx_small_cnn(tmp_path: Path) -> None:
    """A CNN exports, matches onnxruntime, has a dynamic batch axis and keeps its train/eval mode."""
    model = small_cnn()
    model.train()
    example = torch.randn(2, 3, 16, 16)
    path = tmp_path / "onnx" / "model.onnx"
    result = export_onnx(model, example, path)
    assert result.exported, result.reason
    assert result.reason is None and result.opset == 17
    assert result.path == str(path) and result.bytes == path.stat().st_size
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert model.training, "export_onnx must restore the caller's mode"
    assert files_in(path.parent) == ["model.onnx"]
    json.dumps(result.to_dict())

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    batch = torch.randn(5, 3, 16, 16)
    (got,) = session.run(None, {"input": batch.numpy()})
    with torch.no_grad():
        expected = model.eval()(batch).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_export_onnx_without_check(tmp_path: Path) -> None:
    """check=False skips onnxruntime and reports no difference."""
    result = export_onnx(mlp(), torch.randn(1, 3, 4), tmp_path / "m.onnx", check=False, opset=13)
    assert result.exported and result.max_abs_diff is None and result.opset == 13
    assert (tmp_path / "m.onnx").is_file()


class Bessel(nn.Module):
    """Uses an op with no ONNX symbolic at opset 17."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bessel J0 of the input."""
        out: torch.Tensor = torch.special.bessel_j0(x)
        return out


class ItemLoop(nn.Module):
    """A Python loop whose trip count comes from .item(): tracing freezes it for the example input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Double x as many times as 10·max(x) says."""
        for _ in range(int(x.max().item() * 10)):
            x = x * 2
        return x


class _SelfAttention(nn.Module):
    """An encoder layer and a bare MultiheadAttention, both batch-first (torchvision's ViT blocks are built so)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x)
        h, _ = self.attn(h, h, h, need_weights=False)
        out: torch.Tensor = self.head(h.mean(1))
        return out


def test_export_onnx_attention_without_its_fused_kernel(tmp_path: Path) -> None:
    """In eval mode under no_grad, attention runs one fused op with no ONNX conversion; the export traces the plain
    ops instead, and the fast path is switched back on afterwards."""
    model = _SelfAttention().eval()
    result = export_onnx(model, torch.randn(2, 5, 16), tmp_path / "attn.onnx")
    assert result.exported, result.reason  # verified against PyTorch's output by onnxruntime
    assert torch.backends.mha.get_fastpath_enabled()


def test_export_onnx_unsupported_op(tmp_path: Path) -> None:
    """An op the exporter cannot translate gives exported=False with a reason and no file."""
    result = export_onnx(Bessel(), torch.randn(2, 4), tmp_path / "m.onnx")
    assert isinstance(result, OnnxExportResult)
    assert not result.exported and result.path is None and result.bytes == 0
    assert result.reason is not None and "bessel" in result.reason.lower()
    assert files_in(tmp_path) == []


def test_a_failed_export_prints_no_graph_and_leaves_the_onnx_log_as_it_was(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """torch's TorchScript exporter turns its C++ ONNX log on and never off, so a failure printed the whole traced
    graph to stdout (and every later one too); the export keeps the log off and restores its state."""
    torch._C._jit_set_onnx_log_enabled(False)  # as a fresh process has it (another test's direct export may not)
    for _ in range(2):  # the second failure is the one the stuck log used to print as well
        assert not export_onnx(Bessel(), torch.randn(2, 4), tmp_path / "m.onnx").exported
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err and "aten::special_bessel" not in out + err
    assert not torch._C._jit_is_onnx_log_enabled()
    torch._C._jit_set_onnx_log_enabled(True)  # a log the caller turned on stays on
    try:
        assert not export_onnx(Bessel(), torch.randn(2, 4), tmp_path / "m.onnx").exported
        assert torch._C._jit_is_onnx_log_enabled()
        assert "Torch IR graph" in "".join(capfd.readouterr())
    finally:
        torch._C._jit_set_onnx_log_enabled(False)


def test_export_onnx_data_dependent_loop(tmp_path: Path) -> None:
    """A trace that does not generalize is caught by the random-batch check: no file, a reason, the diff."""
    example = torch.full((1, 16), 0.25)  # 10·0.25 -> 2 doublings baked into the trace
    with pytest.warns(Warning, match="Python number"):  # torch's TracerWarning about .item()
        result = export_onnx(ItemLoop(), example, tmp_path / "loop.onnx")
    assert not result.exported
    assert result.reason is not None and "differs" in result.reason
    assert result.max_abs_diff is not None and result.max_abs_diff > 0
    assert files_in(tmp_path) == []


def test_export_onnx_keeps_existing_file_on_failure(tmp_path: Path) -> None:
    """A failed export does not clobber a previous good export at the same path."""
    path = tmp_path / "m.onnx"
    assert export_onnx(mlp(), torch.randn(2, 12), path).exported
    before = path.read_bytes()
    assert not export_onnx(Bessel(), torch.randn(2, 4), path).exported
    assert path.read_bytes() == before and files_in(tmp_path) == ["m.onnx"]


def test_export_onnx_rejects_scalar_input(tmp_path: Path) -> None:
    """An example without a batch axis is a caller error."""
    with pytest.raises(ExportError) as err:
        export_onnx(mlp(), torch.tensor(1.0), tmp_path / "m.onnx")
    assert err.value.code == "invalid_example_input" and err.value.param == "example_input"


# ---------------------------------------------------------------------------------------------- json


def test_write_json_atomic_non_finite(tmp_path: Path) -> None:
    """NaN and ±inf become null at any depth; tuples and numpy scalars are plain JSON."""
    path = tmp_path / "reports" / "r.json"
    obj = {
        "loss": math.nan,
        "nested": {"values": [1.0, math.inf, -math.inf, (2, np.float32("nan"))]},
        "acc": np.float64(0.5),
        "n": np.int64(3),
        "ok": True,
    }
    write_json_atomic(obj, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    assert json.loads(text) == {
        "loss": None,
        "nested": {"values": [1.0, None, None, [2, None]]},
        "acc": 0.5,
        "n": 3,
        "ok": True,
    }
    assert text.startswith('{\n  "loss"'), "indent=2"
    write_json_atomic({"again": 1}, path)
    assert json.loads(path.read_text()) == {"again": 1}
    assert files_in(path.parent) == ["r.json"]


def test_write_json_atomic_rejects_unserializable(tmp_path: Path) -> None:
    """Objects JSON cannot represent raise ExportError and write nothing."""
    with pytest.raises(ExportError) as err:
        write_json_atomic({"x": object()}, tmp_path / "r.json")
    assert err.value.code == "not_json_serializable"
    assert files_in(tmp_path) == []


# ------------------------------------------------------------------------------------ errors and perf


def test_write_failures_raise_export_error(tmp_path: Path) -> None:
    """A destination under a regular file is write_failed for every writer, and nothing is left."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    target = blocker / "artifact"
    for write in (
        lambda: save_dense(mlp(), target),
        lambda: save_sparse(mlp(), target),
        lambda: write_json_atomic({"a": 1}, target),
        lambda: export_onnx(mlp(), torch.randn(2, 12), target),
    ):
        with pytest.raises(ExportError) as err:
            write()
        assert err.value.code == "write_failed" and err.value.param == str(target)
    assert files_in(tmp_path) == ["not_a_dir"]


def test_save_dense_rejects_non_tensor_state(tmp_path: Path) -> None:
    """A module with non-tensor extra state cannot be written as safetensors."""

    class WithExtra(nn.Linear):
        """Linear carrying a Python object in its state dict."""

        def get_extra_state(self) -> object:
            """Non-tensor extra state."""
            return {"note": "x"}

        def set_extra_state(self, state: object) -> None:
            """Accept it back."""

    with pytest.raises(ExportError) as err:
        save_dense(WithExtra(2, 2), tmp_path / "m.safetensors")
    assert err.value.code == "unsupported_dtype" and err.value.param == "_extra_state"
    assert files_in(tmp_path) == []


def test_large_state_round_trip(tmp_path: Path) -> None:
    """8M parameters at mixed sparsity: each tensor gets its smallest encoding and comes back bit for bit."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for i, sparsity in enumerate([0.0, 0.5, 0.9, 0.99]):
        weight = torch.randn(1000, 2000, generator=generator)
        weight[torch.rand(1000, 2000, generator=generator) < sparsity] = 0
        state[f"layer{i}.weight"] = weight
    stats = save_sparse(state, tmp_path / "big.safetensors")
    back = load_sparse(tmp_path / "big.safetensors")
    assert [t.encoding for t in stats.tensors] == ["dense", "bitmask", "bitmask", "csr"]
    assert all(torch.equal(back[k].view(torch.int32), v.view(torch.int32)) for k, v in state.items())
