"""torchvision and timm classifiers a user may name (``torchvision:NAME``, ``timm:NAME``): does the default job run?

    python -m benchmarks.image_model_types [--models torchvision:resnet18,timm:vit_tiny_patch16_224,...]
        [--size 32] [--out benchmarks/results/image-model-types]

Each architecture, randomly initialised as the service builds it, gets one short default DWF job (1 epoch, target
90%, 96 synthetic 3 × SIZE × SIZE images of 4 classes) through ``dwf_core.pipeline.run``: factorize, train,
collapse, export ONNX (checked by onnxruntime), compact, measure. It records what reached each step, the share of
parameters factorized, and why an artifact is missing where one is. Accuracy after one epoch on 96 images says
nothing and is not reported. Writes rows.json and README.md (a table) under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from benchmarks.default_job_rows import job_row, write_results
from benchmarks.stamp import stamp

MODULE = "benchmarks.image_model_types"
MODELS = (
    "torchvision:resnet18",
    "torchvision:mobilenet_v3_small",
    "torchvision:mobilenet_v2",
    "torchvision:efficientnet_b0",
    "torchvision:shufflenet_v2_x0_5",
    "torchvision:squeezenet1_0",
    "torchvision:regnet_x_400mf",
    "torchvision:mnasnet0_5",
    "torchvision:googlenet",
    "torchvision:densenet121",
    "torchvision:convnext_tiny",
    "torchvision:swin_t",
    "torchvision:vit_b_16",
    "timm:resnet10t",
    "timm:mobilenetv3_small_050",
    "timm:convnext_atto",
    "timm:vit_tiny_patch16_224",
    "timm:levit_128s",
    "timm:efficientformer_l1",
    "timm:regnetx_002",
    "timm:ghostnet_050",
    "timm:repvgg_a0",
    "timm:dla34",
    "timm:poolformer_s12",
    "timm:mobilevit_xxs",
    "timm:edgenext_xx_small",
    "timm:fastvit_t8",
    "timm:lcnet_050",
    "timm:tinynet_e",
    "timm:mixer_s16_224",
)


def images(path: Path, size: int, n_train: int = 96, n_test: int = 32) -> Path:
    """A 4-class task of 3 × size × size images: the class brightens one channel, on half or all of the image."""
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 4, n)
        x = rng.normal(0, 1, (n, 3, size, size)).astype(np.float32)
        for i in range(n):
            x[i, y[i] % 3, : size // 2 if y[i] < 2 else size] += 1.0
        return x, y.astype(np.int64)

    x, y = split(n_train)
    xt, yt = split(n_test)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model specs")
    parser.add_argument("--size", type=int, default=32, help="image height and width (CIFAR's 32 by default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/image-model-types"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("timm").setLevel(logging.ERROR)
    header = stamp(MODULE, argv=argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = images(work / "images.npz", args.size)
        for spec in args.models.split(","):
            rows.append(job_row(spec, spec, data, work / spec.replace(":", "_"), batch_size=32))
            print(json.dumps(rows[-1]), flush=True)
    title = f"torchvision and timm classifiers through the default job ({args.size} × {args.size} images)"
    write_results(args.out, MODULE, header, rows, title, "model")


if __name__ == "__main__":
    main()
