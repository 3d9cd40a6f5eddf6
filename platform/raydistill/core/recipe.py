"""Training recipes: optimizer, learning-rate schedule and augmentation from a config section. No Ray.

A recipe is the ``RecipeSection`` of the config (``teacher`` or ``distill``); the same functions
build the teacher's, the distilled student's and the student-alone baseline's training, so the
baseline always gets exactly the distilled student's recipe.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config.schema import AugmentSpec, RecipeSection
from .mixup import mix_batch

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
SPOT_RANGE = 1 << 16  # cutout centres are drawn in [0, 2^16) per axis and scaled to the image (apply_cutout)


def parameter_groups(model: nn.Module, weight_decay: float, decay_norms_and_biases: bool) -> list[dict]:
    """One group with ``weight_decay``; with ``decay_norms_and_biases=False`` a second group holding
    biases and norm-layer parameters with no decay (they set scale and offset, not capacity)."""
    if decay_norms_and_biases or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    no_decay = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    no_decay |= {id(p) for name, p in model.named_parameters() if name.endswith("bias")}
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if id(p) not in no_decay], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, recipe: RecipeSection | None = None) -> torch.optim.Optimizer:
    """``recipe.optimizer`` over ``model``'s parameters at peak ``lr``; Adam with no decay when no recipe."""
    recipe = recipe or RecipeSection()
    groups = parameter_groups(model, recipe.weight_decay, recipe.decay_norms_and_biases)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    # Adam's weight_decay is L2 added to the gradient (coupled), AdamW's is decoupled (Loshchilov & Hutter 2019)
    return torch.optim.Adam(groups, lr=lr)


def lr_factor(epoch: int, recipe: RecipeSection, epochs: int) -> float:
    """Multiplier of the peak lr during ``epoch`` (0-based); ``W = warmup_epochs``, ``E = epochs``.

    warm-up (``e < W``): ``(e + 1) / (W + 1)``;  then with ``t = e - W``, ``N = E - W``:
    ``none``: 1;  ``cosine``: ``(1 + cos(pi * t / N)) / 2`` (SGDR without restarts, Loshchilov & Hutter
    2017; the last epoch trains at a small but non-zero lr);  ``multistep``: ``gamma ** #{m in
    milestones : m <= e}`` (milestones count epochs from the start, as in RepDistiller's 150/180/210).
    """
    w = recipe.warmup_epochs
    if epoch < w:
        return (epoch + 1) / (w + 1)
    if recipe.scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - w) / max(epochs - w, 1)))
    if recipe.scheduler == "multistep":
        return recipe.gamma ** sum(1 for m in recipe.milestones if m <= epoch)
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: RecipeSection | None,
                   epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch ``LambdaLR`` following :func:`lr_factor`; its state goes into every checkpoint."""
    recipe = recipe or RecipeSection()
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, recipe, epochs))


def raw_zero_fill(normalization: dict | None, channels: int) -> tuple[float, ...]:
    """The normalized value of a raw-zero pixel per channel, ``-mean_c / std_c``: what a shifted-in
    border holds (the background of MNIST-like images, the zero padding of a random crop)."""
    if not normalization:
        return (0.0,) * channels
    return tuple(-m / s for m, s in zip(normalization["mean"], normalization["std"]))


def augment_batch(x: torch.Tensor, spec: AugmentSpec, fill: tuple[float, ...],
                  generator: torch.Generator) -> torch.Tensor:
    """Random translate by up to ``+-spec.translate`` px per example and axis (border = ``fill``),
    then a random horizontal flip when ``spec.hflip``, then a random ``spec.cutout`` square erased.
    ``x`` is ``(B, C, H, W)``; so is the result. Draws come only from ``generator`` (offsets, flips,
    then cutout spots): :func:`apply_augment` and :func:`apply_cutout` apply them."""
    if not spec.active():
        return x
    b, k = x.shape[0], spec.translate
    offsets = torch.randint(0, 2 * k + 1, (2, b), generator=generator) if k > 0 else None
    flips = torch.rand(b, generator=generator) < 0.5 if spec.hflip else None
    spots = torch.randint(0, SPOT_RANGE, (2, b), generator=generator) if spec.cutout > 0 else None
    return apply_cutout(apply_augment(x, offsets, flips, k, fill), spots, spec.cutout, fill)


def apply_augment(x: torch.Tensor, offsets: torch.Tensor | None, flips: torch.Tensor | None, translate: int,
                  fill: tuple[float, ...]) -> torch.Tensor:
    """Translate each example ``x[i]`` ``(C, H, W)`` by ``offsets[:, i] - translate`` px (rows,
    columns; border = ``fill``), then mirror it where ``flips[i]``; None skips either step.

    Translating by ``(dy, dx)`` = padding by ``k`` and cropping at offset ``(k + dy, k + dx)``, so
    this is also torchvision's ``RandomCrop(H, padding=k)``. Both steps are one ``gather`` from the
    padded batch ``(B, C, (H+2k)(W+2k))``: output pixel ``(i, j)`` of example ``b`` reads padded
    ``(offsets[0, b] + i, offsets[1, b] + j')`` with ``j' = W-1-j`` when flipped, else ``j``.
    """
    b, c, h, w = x.shape
    k = translate
    if k <= 0 or offsets is None:
        return torch.where(flips[:, None, None, None], x.flip(-1), x) if flips is not None else x
    hp, wp = h + 2 * k, w + 2 * k
    padded = torch.as_tensor(fill, dtype=x.dtype).view(1, c, 1, 1).expand(b, c, hp, wp).clone()
    padded[:, :, k:k + h, k:k + w] = x
    cols = torch.arange(w)
    if flips is not None:
        cols = torch.where(flips[:, None], w - 1 - cols, cols)  # (B, W)
    cols = offsets[1][:, None] + cols
    rows = offsets[0][:, None] + torch.arange(h)  # (B, H)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, flat).reshape(b, c, h, w)


def cutout_centres(spots: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre pixels ``(row, col)`` (each ``spots``' batch shape) that cutout ``spots`` ``(2, ...)``
    in ``[0, SPOT_RANGE)`` pick on a ``height`` x ``width`` image: ``spots[0] * H // SPOT_RANGE`` and
    ``spots[1] * W // SPOT_RANGE``."""
    return spots[0] * height // SPOT_RANGE, spots[1] * width // SPOT_RANGE


def apply_cutout(x: torch.Tensor, spots: torch.Tensor | None, size: int, fill: tuple[float, ...]) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): erase a ``size`` x ``size`` square of each example ``x[i]``
    ``(C, H, W)`` to ``fill``; ``size <= 0`` or no ``spots`` leaves ``x`` as it is.

    ``spots`` ``(2, B)`` in ``[0, SPOT_RANGE)`` place the square's centre at pixel
    ``(r, c)`` = :func:`cutout_centres` (uniform over the pixels,
    so a square near the border is clipped and erases less); it covers rows ``r - size // 2`` to
    ``r - size // 2 + size - 1`` and the same columns around ``c``.
    """
    if size <= 0 or spots is None:
        return x
    b, c, h, w = x.shape
    centre_row, centre_col = cutout_centres(spots, h, w)
    top, left = centre_row - size // 2, centre_col - size // 2  # (B,)
    rows = torch.arange(h) - top[:, None]  # (B, H): 0..size-1 inside the square
    cols = torch.arange(w) - left[:, None]  # (B, W)
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]  # (B, H, W)
    return torch.where(inside[:, None], torch.as_tensor(fill, dtype=x.dtype).view(1, c, 1, 1), x)


def augmented(batches, spec: AugmentSpec, fill: tuple[float, ...] | None, seed: int, num_classes: int = 0):
    """``batches`` with :func:`augment_batch` applied to each batch's inputs, seeded by ``seed``; with
    ``spec.mixup`` then classic mixup (:func:`core.mixup.mix_batch`: labels ``(B, num_classes)``).
    ``fill`` None or empty: a border of 0.0 in every channel (no normalization to undo)."""
    if not spec.active():
        yield from batches
        return
    if spec.mixup > 0 and num_classes < 2:
        raise ValueError(f"augment.mixup mixes labels: it needs the number of classes, got {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    for batch in batches:
        x = augment_batch(batch[0], spec, fill or (0.0,) * int(batch[0].shape[1]), generator)
        if spec.mixup > 0:
            if len(batch) > 2:
                raise ValueError("classic mixup mixes images and labels only: a batch's cached teacher logits "
                                 "(3rd element) would stay those of its clean rows; cache views instead (core.views)")
            x, y = mix_batch(x, batch[1], spec, generator, num_classes)
            yield (x, y, *batch[2:])
            continue
        yield (x, *batch[1:])
