"""The CIFAR-style model pairs distillation papers report on (RepDistiller, mdistiller): ResNets and
wide ResNets with a 3x3 stem that keeps a 32x32 image at 32x32 in the first layer.

* ``resnet{8,20,32,56,110}`` — He et al. 2016, sec. 4.2: a 3x3 conv to 16 channels, three stages of
  ``n = (depth - 2) / 6`` basic blocks at 16/32/64 channels (stride 2 between stages), global average
  pooling, one linear layer. ``resnet8x4`` / ``resnet32x4`` (Tian et al. 2020's pair) use 4x the
  channels: a 32-channel stem and 64/128/256-channel stages. Shortcuts that change shape are a 1x1
  conv + BN (option B), as in those code bases.
* ``wrn_{depth}_{k}`` (``wrn_16_2``, ``wrn_40_2``) — Zagoruyko & Komodakis 2016: pre-activation
  blocks (BN-ReLU-conv), ``n = (depth - 4) / 6`` per stage at 16k/32k/64k channels, optional
  ``dropout`` between the two convs.

Every builder takes ``(C, H, W)`` and the number of classes like the rest of ``core.models``; inputs
are ``(B, C, H, W)`` float tensors, outputs ``(B, num_classes)`` logits.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn


class _Basic(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return nn.functional.relu(self.body(x) + self.shortcut(x))


class _WideBasic(nn.Module):
    """Pre-activation BN-ReLU-conv3x3-[dropout]-BN-ReLU-conv3x3 plus the shortcut (WRN)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        pre = self.pre(x)
        return self.body(pre) + (x if self.shortcut is None else self.shortcut(pre))


def _stages(block, widths: Sequence[int], per_stage: int, cin: int, **kw) -> tuple[list[nn.Module], int]:
    layers = []
    for i, width in enumerate(widths):
        for j in range(per_stage):
            layers.append(block(cin, width, 2 if i > 0 and j == 0 else 1, **kw))
            cin = width
    return layers, cin


def cifar_resnet(input_shape, num_classes: int, *, depth: int, widths: Sequence[int] = (16, 16, 32, 64)) -> nn.Module:
    """``widths`` = (stem, stage 1, stage 2, stage 3) channels; ``depth = 6n + 2``."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (8, 20, 32, 56, 110), got {depth}")
    stem = [nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
    blocks, width = _stages(_Basic, widths[1:], (depth - 2) // 6, widths[0])
    return nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def wide_resnet(input_shape, num_classes: int, *, depth: int, widen: int, dropout: float = 0.0) -> nn.Module:
    """WRN-``depth``-``widen``; ``depth = 6n + 4``."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a wide ResNet has depth 6n + 4 (10, 16, 22, 28, 40), got {depth}")
    blocks, width = _stages(_WideBasic, [16 * widen, 32 * widen, 64 * widen], (depth - 4) // 6, 16, dropout=dropout)
    return nn.Sequential(nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False), *blocks, nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def builders() -> dict:
    """Name -> ``builder(input_shape, num_classes, **args)`` of every model here; ``core.models``
    registers them beside its own (this module imports nothing from it)."""
    found = {}
    for depth in (8, 20, 32, 56, 110):
        found[f"resnet{depth}"] = lambda input_shape, num_classes, _d=depth: cifar_resnet(
            input_shape, num_classes, depth=_d)
    for depth in (8, 32):
        found[f"resnet{depth}x4"] = lambda input_shape, num_classes, _d=depth: cifar_resnet(
            input_shape, num_classes, depth=_d, widths=(32, 64, 128, 256))
    for depth, widen in ((16, 2), (40, 2), (16, 4), (28, 10)):
        found[f"wrn_{depth}_{widen}"] = lambda input_shape, num_classes, dropout=0.0, _d=depth, _k=widen: \
            wide_resnet(input_shape, num_classes, depth=_d, widen=_k, dropout=dropout)
    return found
