"""transformers models from a config.json: built offline without remote code, one x in, logits out, through DWF."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dwf_core.config import TrainConfig
from dwf_core.coverage import coverage
from dwf_core.data import load_dataset
from dwf_core.errors import ModelError
from dwf_core.hf_config import MAX_CONFIG_BYTES
from dwf_core.intake import ModelLimits, build_hf_model, detect_model_format, load_weights
from dwf_core.pipeline import RunSpec, prepare, run
from tests.token_helpers import BERT, VIT, config_json, image_npz, token_arrays, token_npz


def _bert(path: Path, **changes: object) -> nn.Module:
    return build_hf_model(
        config_json(path / "config.json", BERT, **changes),
        num_classes=3,
        input_shape=(2, 16),
        tokens=True,
        max_token_id=99,
    )


def _fails(path: Path, code: str, param: str | None = None, **kwargs: object) -> ModelError:
    defaults: dict[str, object] = {"num_classes": 3, "input_shape": (2, 16), "tokens": True, "max_token_id": 99}
    with pytest.raises(ModelError) as info:
        build_hf_model(path, **{**defaults, **kwargs})  # type: ignore[arg-type]
    assert info.value.code == code, info.value.message
    if param is not None:
        assert info.value.param == param, info.value.message
    return info.value


def test_config_json_is_detected_by_content(tmp_path: Path) -> None:
    path = config_json(tmp_path / "anything.bin", BERT)
    assert detect_model_format(path) == "hf-config"
    (tmp_path / "one-line.json").write_text(json.dumps(BERT))  # commas on the first line: not CSV
    assert detect_model_format(tmp_path / "one-line.json") == "hf-config"


def test_bert_takes_one_token_tensor_and_returns_logits(tmp_path: Path) -> None:
    import huggingface_hub.constants

    model = _bert(tmp_path).eval()
    arrays = token_arrays(4, 4, 16)
    ids, mask = torch.from_numpy(arrays["input_ids_test"]), torch.from_numpy(arrays["attention_mask_test"])
    with torch.no_grad():
        stacked = model(torch.stack([ids, mask], 1))
        reference = type(model).__mro__[1].forward(model, input_ids=ids, attention_mask=mask).logits
        no_mask = model(ids)
    assert stacked.shape == (4, 3) and no_mask.shape == (4, 3)
    torch.testing.assert_close(stacked, reference)
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # built with the Hub switched off
    assert next(model.parameters()).dtype == torch.float32 and model.config.num_labels == 3


def test_every_weight_matrix_is_factorized_embedding_tables_included(tmp_path: Path) -> None:
    model = _bert(tmp_path)
    cov = coverage(model)
    matrices = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    embeddings = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in n and "LayerNorm" not in n)
    assert cov.factorized == matrices  # Linear weights and the word, position and token-type tables
    assert (cov.total, cov.factorized, embeddings) == (22595, 17504 + 4288, 4288)
    assert cov.factorized / cov.total >= 0.95


GPT2 = {"model_type": "gpt2", "vocab_size": 100, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32}


def test_a_decoder_config_without_pad_token_reads_each_sequence_at_its_end(tmp_path: Path) -> None:
    """GPT-2's own configs name no pad token, with which transformers refuses any batch of more than one sequence."""
    model = build_hf_model(
        config_json(tmp_path / "gpt2.json", GPT2), num_classes=3, input_shape=(16,), tokens=True, max_token_id=99
    ).eval()
    ids = torch.from_numpy(token_arrays(4, 4, 16, mask=False)["input_ids_test"])
    with torch.no_grad():
        batch = model(ids)
        one_by_one = torch.cat([model(ids[i : i + 1]) for i in range(4)])
    assert batch.shape == (4, 3)
    torch.testing.assert_close(batch, one_by_one)  # each row from its own last position
    # Every weight matrix is factorized: the blocks' Conv1D (a Linear stored (in, out)) as well as the tables.
    cov = coverage(model)
    assert cov.factorized == sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    kept = build_hf_model(
        config_json(tmp_path / "pad.json", GPT2, pad_token_id=0), num_classes=3, input_shape=(16,), tokens=True
    )
    assert kept.config.pad_token_id == 0  # a config that names its pad token keeps it


def test_grouped_query_attention_exports_with_its_attention_written_out(tmp_path: Path) -> None:
    """The TorchScript exporter cannot convert SDPA with grouped K/V heads (Mistral, Qwen2, Gemma): the export
    retries with transformers' eager attention, and the model keeps its own implementation afterwards."""
    from dwf_core.export import export_onnx

    mistral = {
        "model_type": "mistral",
        "vocab_size": 100,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
        "max_position_embeddings": 32,
    }
    model = build_hf_model(
        config_json(tmp_path / "mistral.json", mistral), num_classes=3, input_shape=(16,), tokens=True
    ).eval()
    assert model.config._attn_implementation == "sdpa"
    ids = torch.from_numpy(token_arrays(4, 4, 16, mask=False)["input_ids_test"])
    result = export_onnx(model, ids[:2], tmp_path / "model.onnx")
    assert result.exported, result.reason  # checked against the PyTorch model by onnxruntime
    assert model.config._attn_implementation == "sdpa"


def test_a_config_without_a_position_limit_is_not_refused(tmp_path: Path) -> None:
    xlnet = {"model_type": "xlnet", "vocab_size": 100, "d_model": 32, "n_layer": 1, "n_head": 2, "d_inner": 64}
    model = build_hf_model(config_json(tmp_path / "xlnet.json", xlnet), num_classes=3, input_shape=(16,), tokens=True)
    assert model.config.max_position_embeddings == -1  # relative positions: any length
    assert model.eval()(torch.randint(0, 100, (2, 16))).shape == (2, 3)


def test_transformers_safetensors_weights_load_by_key(tmp_path: Path) -> None:
    trained = _bert(tmp_path).eval()
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "model.safetensors"))
    fresh = _bert(tmp_path).eval()
    load_weights(fresh, tmp_path / "model.safetensors")
    x = torch.randint(0, 100, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), trained(x))


@pytest.mark.parametrize(
    ("changes", "code", "param"),
    [
        ({"auto_map": {"AutoModelForSequenceClassification": "evil.Model"}}, "remote_code_refused", "auto_map"),
        ({"text_config": {"auto_map": {"AutoModel": "x--y.Z"}}}, "remote_code_refused", "text_config.auto_map"),
        ({"model_type": "not-a-transformers-model"}, "hf_unknown_model_type", "model_type"),
        ({"model_type": None}, "hf_config_invalid", "model_type"),
        ({"use_pretrained_backbone": True}, "hf_config_unsupported", "use_pretrained_backbone"),
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "hf_config_unsupported", "quantization_config"),
        ({"hidden_size": 33}, "hf_config_invalid", "model"),
        ({"vocab_size": 50}, "vocab_mismatch", "vocab_size"),
        ({"max_position_embeddings": 8}, "input_shape_mismatch", "max_position_embeddings"),
    ],
    ids=[
        "auto_map",
        "nested-auto_map",
        "unknown-model_type",
        "no-model_type",
        "pretrained-backbone",
        "quantization",
        "heads-do-not-divide",
        "ids-beyond-vocab",
        "too-long",
    ],
)
def test_refused_configs_say_why(tmp_path: Path, changes: dict[str, object], code: str, param: str) -> None:
    _fails(config_json(tmp_path / "config.json", BERT, **changes), code, param)


def test_not_json_and_too_large_are_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"model_type": "bert",')
    _fails(tmp_path / "broken.json", "corrupt_file")
    (tmp_path / "big.json").write_text('{"model_type": "bert", "pad": "' + "x" * MAX_CONFIG_BYTES + '"}')
    _fails(tmp_path / "big.json", "too_large")
    _fails(config_json(tmp_path / "config.json", BERT), "too_large", limits=ModelLimits(max_params=10_000))


def test_the_head_follows_the_dataset(tmp_path: Path) -> None:
    err = _fails(config_json(tmp_path / "vit.json", VIT), "hf_no_classification_head", "model_type")
    assert "bert" in err.message
    _fails(config_json(tmp_path / "bert.json", BERT), "hf_no_classification_head", tokens=False, input_shape=(1, 8, 8))
    _fails(config_json(tmp_path / "vit.json", VIT), "input_shape_mismatch", tokens=False, input_shape=(3, 8, 8))


def test_bert_on_tokens_through_the_pipeline(tmp_path: Path) -> None:
    """A few hundred token samples, 2 epochs: metrics written, sparse, exported (or a reason), keys of transformers."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    spec = RunSpec(
        model=str(config_json(tmp_path / "config.json", BERT)),
        data=str(token_npz(tmp_path / "tokens.npz", n_train=300, n_test=100)),
        out_dir=tmp_path / "out",
        train=TrainConfig(epochs=2, batch_size=64, target_sparsity=0.5, device="cpu", seed=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' tracer warnings during the ONNX export
        metrics = run(spec)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["model"]["source"] == "hf-config" and written["dataset"]["tokens"] is True
    assert metrics["sparsity"] > 0.4 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["parameters"]["factorized"] == 17504 + 4288  # the embedding tables too
    assert "exported" in metrics["onnx"] and (metrics["onnx"]["exported"] or metrics["onnx"]["reason"])
    if metrics["onnx"]["exported"]:
        import onnx

        graph = onnx.load(str(tmp_path / "out" / "model.onnx"))
        assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    # The collapsed weights load back into plain transformers, key for key.
    plain = AutoModelForSequenceClassification.from_config(BertConfig(**{**BERT, "num_labels": 3}))
    plain.load_state_dict(load_file(str(tmp_path / "out" / "model.safetensors")), strict=True)


def test_gpt2_on_tokens_through_the_pipeline(tmp_path: Path) -> None:
    """A GPT-2 config (no pad token, Conv1D blocks): every matrix sparse, exported, loads back into transformers."""
    from transformers import AutoModelForSequenceClassification, GPT2Config

    spec = RunSpec(
        model=str(config_json(tmp_path / "config.json", GPT2)),
        data=str(token_npz(tmp_path / "tokens.npz", n_train=200, n_test=64, mask=False)),
        out_dir=tmp_path / "out",
        train=TrainConfig(epochs=1, batch_size=64, target_sparsity=0.9, device="cpu", seed=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run(spec)
    assert metrics["parameters"]["factorized_share"] > 0.95 and metrics["sparsity_all"] > 0.85
    assert metrics["onnx"]["exported"], metrics["onnx"].get("reason")
    plain = AutoModelForSequenceClassification.from_config(GPT2Config(**{**GPT2, "num_labels": 3}))
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    plain.load_state_dict(weights, strict=True)
    block = weights["transformer.h.0.mlp.c_fc.weight"]
    assert block.shape == (32, 128) and float((block == 0).float().mean()) > 0.5  # (in, out) as transformers keeps it


def test_vit_on_tiny_images_through_the_pipeline(tmp_path: Path) -> None:
    spec = RunSpec(
        model=str(config_json(tmp_path / "config.json", VIT)),
        data=str(image_npz(tmp_path / "images.npz")),
        out_dir=tmp_path / "out",
        train=TrainConfig(epochs=1, batch_size=32, target_sparsity=0.5, device="cpu", seed=0),
        export_onnx=False,
    )
    metrics = run(spec)
    assert metrics["model"]["source"] == "hf-config" and metrics["sparsity"] > 0.4
    assert (tmp_path / "out" / "metrics.json").is_file()
    # The patch projection is a Conv2d: factorized by default like every Linear.
    assert any(layer["name"].endswith("patch_embeddings.projection.weight") for layer in metrics["layers"])


def test_token_data_needs_a_model_that_takes_ids(tmp_path: Path) -> None:
    data = str(token_npz(tmp_path / "tokens.npz", n_train=40, n_test=10))
    with pytest.raises(ModelError) as info:
        prepare(RunSpec(model="lenet_300_100", data=data, out_dir=tmp_path / "out"))
    assert (info.value.code, info.value.param) == ("token_input_unsupported", "model")


class _Bag(nn.Module):
    """Embedding-bag classifier: the kind of model whose ONNX graph takes int64 ids."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))


def test_onnx_with_an_integer_input_gets_int64_x(tmp_path: Path) -> None:
    """x_* arrays of ids are read as float32; an ONNX graph with an int64 input gets them back as int64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Bag().eval(),
            (torch.zeros(2, 16, dtype=torch.int64),),
            str(tmp_path / "bag.onnx"),
            dynamo=False,
            input_names=["ids"],
            output_names=["logits"],
            dynamic_axes={"ids": {0: "n"}, "logits": {0: "n"}},
        )
    arrays = token_arrays(200, 50, 16, mask=False)
    np.savez(
        tmp_path / "ids.npz",
        x_train=arrays["input_ids_train"],
        y_train=arrays["labels_train"],
        x_test=arrays["input_ids_test"],
        y_test=arrays["labels_test"],
    )
    assert load_dataset(tmp_path / "ids.npz").train.x.dtype == torch.float32
    spec = RunSpec(
        model=str(tmp_path / "bag.onnx"),
        data=str(tmp_path / "ids.npz"),
        out_dir=tmp_path / "out",
        train=TrainConfig(epochs=1, batch_size=64, target_sparsity=0.5, device="cpu"),
    )
    prepared = prepare(spec)
    assert prepared.data.train.x.dtype == prepared.data.test.x.dtype == torch.int64
    metrics = run(spec)
    assert metrics["onnx"]["exported"], metrics["onnx"]
    assert metrics["sparsity"] > 0.4
