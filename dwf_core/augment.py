"""Training-time data augmentation for image inputs: random shifts and horizontal flips of each training batch.

``TrainConfig.augment`` (CLI ``--augment``, API ``method.augment``) is a comma-separated list of transforms:

- ``shift`` / ``shift:N``: move each image by a random whole number of pixels in [−N, N] in both directions
  (N defaults to ``DEFAULT_SHIFT``), the uncovered border repeating the edge pixels (the pad-and-crop of CIFAR
  recipes; inputs are normalized by then, so zeros would paint a border of the mean colour, while the repeated edge
  of a digit's background is background).
- ``flip``: mirror each image left-right with probability 1/2 (natural images; never for digits or text).

Only training batches change: validation, test, the BatchNorm recalibration and every accuracy stay on the data as
given. The draws come from their own seeded generator, so a run is as reproducible as without augmentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dwf_core.errors import ConfigError

DEFAULT_SHIFT = 2
MAX_SHIFT = 16


@dataclass(frozen=True)
class Augmentation:
    """The parsed setting: shift (pixels, 0 for none) and flip."""

    shift: int = 0
    flip: bool = False

    def describe(self) -> str:
        """The canonical spelling, e.g. ``"shift:2,flip"``."""
        parts = ([f"shift:{self.shift}"] if self.shift else []) + (["flip"] if self.flip else [])
        return ",".join(parts)


def parse_augment(spec: str) -> Augmentation:
    """Parse ``"shift"``, ``"shift:N"``, ``"flip"`` or a comma-separated combination.

    Raises:
        ConfigError: an unknown transform, a repeated one, or a shift outside 1..MAX_SHIFT.
    """
    shift, flip, seen = 0, False, set()
    for raw in spec.split(","):
        part = raw.strip().lower()
        name, _, arg = part.partition(":")
        if name in seen:
            raise ConfigError(f"augment: {name!r} is given twice in {spec!r}", param="augment")
        seen.add(name)
        if name == "shift":
            if arg and not re.fullmatch(r"[0-9]{1,3}", arg):
                raise ConfigError(
                    f"augment: shift takes a whole number of pixels (shift:2), got {part!r}", param="augment"
                )
            shift = int(arg) if arg else DEFAULT_SHIFT
            if not 1 <= shift <= MAX_SHIFT:
                raise ConfigError(f"augment: shift must be 1..{MAX_SHIFT} pixels, got {shift}", param="augment")
        elif name == "flip" and not arg:
            flip = True
        else:
            raise ConfigError(
                f"augment: unknown transform {part!r}; use shift, shift:N, flip or a comma-separated list",
                param="augment",
            )
    return Augmentation(shift, flip)


def check_images(x: torch.Tensor, augmentation: Augmentation) -> None:
    """Refuse inputs the transforms do not apply to (they need float images shaped (N, C, H, W)).

    Raises:
        ConfigError: with the inputs' shape and what would work.
    """
    if x.dim() != 4 or not x.dtype.is_floating_point:
        raise ConfigError(
            f"augment {augmentation.describe()!r} needs image inputs (float, N × C × H × W); this dataset's inputs are "
            f"{x.dtype} of shape {tuple(x.shape)}: leave augment unset",
            param="augment",
        )
    height, width = x.shape[-2:]
    if augmentation.shift >= min(height, width):
        raise ConfigError(
            f"augment: a shift of {augmentation.shift} pixels is not smaller than the images ({height} × {width})",
            param="augment",
        )


class BatchAugmenter:
    """Applies an ``Augmentation`` to training batches with its own seeded generator (CPU draws, any device)."""

    def __init__(self, augmentation: Augmentation, seed: int) -> None:
        self.augmentation = augmentation
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.augmentation.shift:
            x = random_shift(x, self.augmentation.shift, self.generator)
        if self.augmentation.flip:
            flipped = torch.rand(x.shape[0], generator=self.generator) < 0.5
            x = torch.where(flipped.to(x.device)[:, None, None, None], x.flip(-1), x)
        return x


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) moved by its own offsets in [−shift, shift], edge pixels filling the border."""
    n, _, height, width = x.shape
    offsets = torch.randint(0, 2 * shift + 1, (2, n), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift), mode="replicate")
    rows = offsets[0][:, None] + torch.arange(height, device=x.device)  # (N, H) rows of the padded image
    cols = offsets[1][:, None] + torch.arange(width, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)
    # Advanced indices around a slice go first: (N, H, C, W+2s) then (N, W, C, H) → back to (N, C, H, W).
    picked_rows = padded[batch[:, None], :, rows]
    picked = picked_rows.permute(0, 3, 2, 1)[batch[:, None], cols]  # (N, W, C, H)
    return picked.permute(0, 2, 3, 1).contiguous()
