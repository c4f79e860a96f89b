"""Small attention models shared by the head compaction and head gate tests (timm ViT, a BERT from a config)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

HEADS, SEQ, VOCAB = 4, 8, 50


def timm_vit() -> nn.Module:
    """timm's ViT with one block of HEADS heads on 16×16 RGB images, 3 classes (no download)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=16,
        patch_size=8,
        embed_dim=32,
        depth=1,
        num_heads=HEADS,
        num_classes=3,
    )


def bert(tmp_path: Path) -> nn.Module:
    """A one-layer BERT with HEADS heads from a config.json written to ``tmp_path``, on SEQ token ids, 3 classes."""
    from dwf_core.intake import build_hf_model

    config = {
        "model_type": "bert",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": HEADS,
        "intermediate_size": 64,
        "max_position_embeddings": SEQ,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    torch.manual_seed(0)
    return build_hf_model(path, num_classes=3, input_shape=(SEQ,), tokens=True)
