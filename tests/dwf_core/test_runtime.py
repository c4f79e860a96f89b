"""dwf_core.runtime: CSR Linear layers compute what the dense ones do, from any dwf artifact, chosen or forced.

No assertion here depends on a timing: where the chooser decides, only the consistency of its report and the
outputs are checked; ``force`` pins the choice everywhere else.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import dwf_core
from dwf_core.compact import IndexedLinear, write_compact
from dwf_core.errors import ConfigError, ModelError, WeightsError
from dwf_core.export import save_dense, save_sparse
from dwf_core.intake import build_model
from dwf_core.runtime import CsrLinear, choose_layers, load_runtime

MNIST = (1, 28, 28)
ARTIFACTS = ("model.compact.safetensors", "model.sparse.safetensors", "model.safetensors")
FAST = {"repeats": 1, "min_time_ms": 0.05}  # timings are only reported here, never asserted


def _fresh(num_classes: int = 10) -> nn.Module:
    return build_model("lenet_300_100", num_classes=num_classes, in_channels=1, input_shape=MNIST)


def _sparse_lenet() -> nn.Module:
    """LeNet-300-100 with 99% random zeros in every weight (and so dead inputs and units to compact away)."""
    torch.manual_seed(0)
    model = _fresh().eval()
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.weight.mul_(torch.rand_like(layer.weight) > 0.99)
    return model


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """The dense reference and a folder with the three weight artifacts a job writes."""
    out = tmp_path_factory.mktemp("job")
    model = _sparse_lenet()
    save_dense(model, out / "model.safetensors")
    save_sparse(model, out / "model.sparse.safetensors")
    outcome = write_compact(model, torch.randn(8, *MNIST), out, metadata={"model": "lenet_300_100"}, onnx=False)
    assert (out / "model.compact.safetensors").is_file(), outcome.info
    return model, out


def _inputs(batch: int = 5) -> torch.Tensor:
    return torch.randn(batch, *MNIST, generator=torch.Generator().manual_seed(7))


def _assert_same(reference: nn.Module, model: nn.Module) -> None:
    for batch in (1, 5, 64):
        x = _inputs(batch)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("artifact", ARTIFACTS)
@pytest.mark.parametrize("force", ["csr", "dense", None])
def test_outputs_equal_the_dense_model_whatever_is_chosen(
    job: tuple[nn.Module, Path], artifact: str, force: str | None
) -> None:
    reference, out = job
    result = load_runtime(_fresh(), out / artifact, example=_inputs(2), batch_size=16, force=force, **FAST)  # type: ignore[arg-type]
    assert result.source == {"model.compact.safetensors": "compact", "model.sparse.safetensors": "sparse"}.get(
        artifact, "dense"
    )
    assert [layer.name for layer in result.layers] == ["fc1", "fc2", "fc3"]  # every Linear, in module order
    for layer in result.layers:
        assert layer.chosen == (force or layer.chosen)
        assert isinstance(result.model.get_submodule(layer.name), CsrLinear) == (layer.chosen == "csr")
        assert layer.dense_ms > 0 and layer.csr_ms > 0 and layer.input_shape[0] == 16
        assert 0 < layer.density <= 0.3
    assert result.batch_size == 16 and result.max_abs_diff < 1e-5
    _assert_same(reference, result.model)


def test_report_gives_shapes_densities_and_a_json_ready_dict(job: tuple[nn.Module, Path]) -> None:
    reference, out = job
    result = load_runtime(_fresh(), out / "model.sparse.safetensors", example=_inputs(1), force="csr", **FAST)
    fc1 = result.layers[0]
    assert fc1.shape == (300, 784) and fc1.input_shape == (1, 784)
    assert fc1.density == pytest.approx(int(reference.fc1.weight.count_nonzero()) / (300 * 784))
    assert result.csr_layers == ["fc1", "fc2", "fc3"]
    report = result.to_dict()
    assert report["source"] == "sparse" and report["layers"][0]["chosen"] == "csr"
    assert report["layers"][0]["speedup"] == pytest.approx(fc1.dense_ms / fc1.csr_ms)
    assert "nnz=" in repr(result.model.fc1)


def test_compact_indexed_linear_keeps_its_input_gather(job: tuple[nn.Module, Path]) -> None:
    reference, out = job
    compact = load_runtime(_fresh(), out / "model.compact.safetensors", example=_inputs(1), force="dense", **FAST)
    assert isinstance(compact.model.fc1, IndexedLinear)
    live = compact.model.fc1.in_features
    result = load_runtime(_fresh(), out / "model.compact.safetensors", example=_inputs(1), force="csr", **FAST)
    assert isinstance(result.model.fc1, CsrLinear) and result.model.fc1.input_index is not None
    assert result.layers[0].shape[1] == live < 784
    _assert_same(reference, result.model)


def test_csr_linear_matches_linear_for_any_leading_shape_and_without_bias() -> None:
    torch.manual_seed(1)
    for bias in (True, False):
        linear = nn.Linear(40, 12, bias=bias)
        with torch.no_grad():
            linear.weight.mul_(torch.rand_like(linear.weight) > 0.8)
            linear.weight[3] = 0  # an empty CSR row
        csr = CsrLinear(linear)
        assert list(csr.parameters()) == []  # inference only: nothing to train
        for shape in ((40,), (1, 40), (6, 40), (2, 3, 40)):
            x = torch.randn(shape)
            with torch.no_grad():
                torch.testing.assert_close(csr(x), linear(x), atol=1e-5, rtol=0)
    empty = nn.Linear(5, 3)
    with torch.no_grad():
        empty.weight.zero_()
    torch.testing.assert_close(CsrLinear(empty)(torch.randn(4, 5)), empty.bias.detach().expand(4, 3))


def test_linear_layers_called_only_through_their_weight_are_left_alone() -> None:
    """``MultiheadAttention`` reads ``out_proj.weight`` without calling it: replacing it would break the model."""
    torch.manual_seed(2)

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(dim=1))

    model = Attn().eval()
    x = torch.randn(4, 5, 16)
    with torch.no_grad():
        expected = model(x)
    result = choose_layers(model, x, force="csr", **FAST)  # type: ignore[arg-type]
    assert [layer.name for layer in result.layers] == ["head"]
    assert type(model.attn.out_proj) is not CsrLinear and isinstance(model.head, CsrLinear)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_a_layer_whose_csr_form_changes_the_outputs_stays_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _sparse_lenet()
    monkeypatch.setattr(CsrLinear, "forward", lambda self, x: torch.zeros(x.shape[0], self.out_features))
    result = choose_layers(model, _inputs(2), force="csr", **FAST)  # type: ignore[arg-type]
    assert [layer.chosen for layer in result.layers] == ["dense"] * 3
    assert all("outputs change" in (layer.note or "") for layer in result.layers)
    assert all(type(m) is nn.Linear for m in (model.fc1, model.fc2, model.fc3))


def test_a_model_that_fails_with_a_csr_layer_keeps_it_dense() -> None:
    """A CSR layer returns a transposed view; ``.view(-1)`` on it fails, so that layer must stay dense."""

    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 12)
            self.head = nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.fc(x).view(-1).reshape(x.shape[0], 12))

    model = Flat().eval()
    x = torch.randn(4, 8)
    with torch.no_grad():
        expected = model(x)
    result = choose_layers(model, x, force="csr", **FAST)  # type: ignore[arg-type]
    fc, head = result.layers
    assert fc.chosen == "dense" and "fails" in (fc.note or "") and type(model.fc) is nn.Linear
    assert head.chosen == "csr" and head.note is None and isinstance(model.head, CsrLinear)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_csr_layers_that_break_the_model_only_together_are_all_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _sparse_lenet()
    monkeypatch.setattr(CsrLinear, "forward", lambda self, x: torch.zeros(x.shape[0], self.out_features))
    monkeypatch.setattr("dwf_core.runtime._problem", lambda *args: None)  # the per-layer check misses it
    with pytest.raises(ModelError) as caught:
        choose_layers(model, _inputs(2), force="csr", **FAST)  # type: ignore[arg-type]
    assert caught.value.code == "sparse_runtime_mismatch"
    assert all(type(m) is nn.Linear for m in (model.fc1, model.fc2, model.fc3))


def test_a_csr_layer_reads_the_transposed_output_of_the_one_before() -> None:
    model = _sparse_lenet()
    result = choose_layers(model, _inputs(3), force="csr", **FAST)  # type: ignore[arg-type]
    assert result.csr_layers == ["fc1", "fc2", "fc3"]
    seen: dict[str, torch.Tensor] = {}
    model.fc2.register_forward_pre_hook(lambda _m, args: seen.setdefault("fc2", args[0]))
    with torch.no_grad():
        model(_inputs(3))
    assert seen["fc2"].t().is_contiguous()  # no copy needed for W·xᵀ


def test_threads_are_restored_after_timing(job: tuple[nn.Module, Path]) -> None:
    _, out = job
    before = torch.get_num_threads()
    result = load_runtime(_fresh(), out / "model.sparse.safetensors", example=_inputs(1), threads=1, **FAST)
    assert result.threads == 1 and torch.get_num_threads() == before


def test_wrong_files_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pt"
    torch.save({"fc1.weight": torch.zeros(1)}, pickled)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 16)
    for path, code in ((pickled, "unsupported_format"), (junk, "corrupt_file")):
        with pytest.raises(WeightsError) as caught:
            load_runtime(_fresh(), path, example=_inputs(1), **FAST)
        assert caught.value.code == code, caught.value.message
    with pytest.raises(WeightsError) as missing:
        load_runtime(_fresh(), tmp_path / "nothing.safetensors", example=_inputs(1), **FAST)
    assert missing.value.code == "not_found"


@pytest.mark.parametrize(
    ("artifact", "code"),
    [
        ("model.sparse.safetensors", "shape_mismatch"),
        ("model.safetensors", "shape_mismatch"),
        ("model.compact.safetensors", "invalid_compact_file"),
    ],
)
def test_artifacts_of_another_shape_are_refused(job: tuple[nn.Module, Path], artifact: str, code: str) -> None:
    _, out = job
    with pytest.raises(WeightsError) as caught:
        load_runtime(_fresh(num_classes=5), out / artifact, example=_inputs(1), **FAST)
    assert caught.value.code == code, caught.value.message
    other = build_model("lenet5", num_classes=10, in_channels=1, input_shape=MNIST)
    with pytest.raises(WeightsError):
        load_runtime(other, out / artifact, example=_inputs(1), **FAST)


def test_bad_settings_are_config_errors(job: tuple[nn.Module, Path]) -> None:
    _, out = job
    path = out / "model.sparse.safetensors"
    for settings in ({"force": "fast"}, {"batch_size": 0}, {"threads": 0}, {"repeats": 0}):
        with pytest.raises(ConfigError):
            load_runtime(_fresh(), path, example=_inputs(1), **settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        load_runtime(_fresh(), path, example=torch.zeros(()))


def test_load_runtime_is_exported_from_dwf_core() -> None:
    assert dwf_core.load_runtime is load_runtime
