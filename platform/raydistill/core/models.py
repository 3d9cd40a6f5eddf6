"""Model zoo registry. No Ray here.

Every builder takes ``input_shape=(C, H, W)`` and ``num_classes`` from the data set plus its
own keyword arguments, so the same name fits 8x8 digits, 28x28 Fashion-MNIST and 32x32 CIFAR.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Sequence

import torch
from torch import nn

from .cifar_models import builders as cifar_builders
from .registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


@MODELS.register("mlp")
def _mlp(input_shape, num_classes, *, hidden: Sequence[int] = (1200, 1200), dropout: float = 0.0,
         input_dropout: float = 0.0) -> nn.Module:
    """Flatten -> [Dropout(input_dropout)] -> [Linear -> ReLU -> Dropout] per hidden width -> Linear(classes).

    Hinton et al. 2015 use 1200-1200 (teacher) and 800-800 (student) on MNIST; their teacher drops
    hidden units with p=0.5 and input pixels with p=0.2 (Hinton et al. 2012, "Improving neural networks
    by preventing co-adaptation of feature detectors").
    """
    if not (0.0 <= dropout < 1.0 and 0.0 <= input_dropout < 1.0):
        raise ValueError(f"dropout and input_dropout must be in [0, 1), got {dropout} and {input_dropout}")
    c, h, w = input_shape
    layers: list[nn.Module] = [nn.Flatten()]
    if input_dropout:
        layers.append(nn.Dropout(input_dropout))
    width = c * h * w
    for units in hidden:
        layers += [nn.Linear(width, int(units)), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(units)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    """3x3 conv (pad 1) -> ReLU -> 2x2 max-pool: halves H and W."""
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]


def _seed_cnn(input_shape, num_classes, *, channels: Sequence[int], fc: int) -> nn.Module:
    """The seed paper's pair generalised to n conv blocks: conv c0 -> ... -> conv c(n-1) -> fc -> classes.

    Each block is a 3x3 conv + 2x2 pool, so the spatial size after n blocks is ``(H >> n, W >> n)``
    and the first fc input ``c(n-1) * (H >> n) * (W >> n)`` is derived from it.
    """
    c, h, w = input_shape
    widths = [int(width) for width in channels]
    if not widths or min(widths) < 1:
        raise ValueError(f"channels must be a non-empty list of positive ints, got {list(channels)}")
    if (h >> len(widths)) < 1 or (w >> len(widths)) < 1:
        raise ValueError(f"{len(widths)} conv blocks halve {h}x{w} pixels {len(widths)} times: "
                         f"nothing is left for the fc layer; use at most {min(h, w).bit_length() - 1}")
    blocks = [layer for cin, cout in zip([c] + widths[:-1], widths) for layer in _conv_block(cin, cout)]
    flat = widths[-1] * (h >> len(widths)) * (w >> len(widths))
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(flat, fc), nn.ReLU(), nn.Linear(fc, num_classes))


@MODELS.register("cnn")
def _cnn(input_shape, num_classes, *, channels: Sequence[int] = (32, 64), fc: int = 128) -> nn.Module:
    """One 3x3 conv + pool block per entry of ``channels``, then one hidden fc layer of width ``fc``.

    Parameters, with c_{-1} = C and n = len(channels):
    ``sum_i (9*c_{i-1}*c_i + c_i) + (c_{n-1}*(H>>n)*(W>>n) + 1)*fc + (fc + 1)*classes``.
    """
    return _seed_cnn(input_shape, num_classes, channels=channels, fc=fc)


@MODELS.register("seed_teacher")
def _seed_teacher(input_shape, num_classes) -> nn.Module:
    return _seed_cnn(input_shape, num_classes, channels=(64, 128), fc=512)


@MODELS.register("seed_student")
def _seed_student(input_shape, num_classes) -> nn.Module:
    return _seed_cnn(input_shape, num_classes, channels=(32, 64), fc=128)


@MODELS.register("cnn_small")
def _cnn_small(input_shape, num_classes, *, channels: Sequence[int] = (16, 32), hidden: int = 64) -> nn.Module:
    """Two conv blocks then adaptive average pooling to 2x2, so any H, W >= 4 fits."""
    c = input_shape[0]
    c0, c1 = channels
    return nn.Sequential(*_conv_block(c, c0), *_conv_block(c0, c1), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(c1 * 4, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


SMALL_INPUT_PX = 64  # stem "auto": images at most this large get the small-input stem


def _small_stem(input_shape, stem: str) -> bool:
    """Whether ``stem`` ("auto" | "small" | "imagenet") means the small-input stem for ``(C, H, W)``."""
    if stem not in ("auto", "small", "imagenet"):
        raise ValueError(f"stem must be auto, small or imagenet, got {stem!r}")
    return stem == "small" or (stem == "auto" and max(input_shape[1:]) <= SMALL_INPUT_PX)


@MODELS.register("resnet18")
def _resnet18(input_shape, num_classes, *, stem: str = "auto") -> nn.Module:
    """torchvision ResNet-18, random init (no weight download), first conv fit to C channels. The
    ImageNet stem (7x7 stride 2 + max-pool) cuts a 32x32 image to 8x8 before the first block; the
    small-input stem (3x3 stride 1, no max-pool: the CIFAR variant) keeps 32x32."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if _small_stem(input_shape, stem):
        model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


@MODELS.register("mobilenet_v3_small")
def _mobilenet_v3_small(input_shape, num_classes, *, stem: str = "auto") -> nn.Module:
    """torchvision MobileNetV3-Small, random init, first conv fit to C channels (stride 1 instead of 2
    with the small-input stem)."""
    import torchvision

    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    first = model.features[0][0]
    stride = 1 if _small_stem(input_shape, stem) else 2
    model.features[0][0] = nn.Conv2d(input_shape[0], first.out_channels, 3, stride=stride, padding=1, bias=False)
    return model


def build_model(name: str, input_shape: Sequence[int], num_classes: int, args: dict | None = None) -> nn.Module:
    """Build registry model ``name`` for inputs ``(C, H, W)`` and ``num_classes`` outputs.

    Raises
    ------
    KeyError
        unknown model name (lists the known ones).
    ValueError
        arguments the builder does not take.
    """
    builder = MODELS.get(name)
    try:
        return builder(tuple(int(s) for s in input_shape), int(num_classes), **(args or {}))
    except TypeError as exc:
        raise ValueError(f"model '{name}': bad arguments {args}: {exc}") from exc


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def quantize_int8(model: nn.Module) -> nn.Module:
    """INT8 dynamic quantization of every ``nn.Linear`` (weights int8, activations quantized on
    the fly per batch); other layers stay float32. Returns a new model in eval mode."""
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, but still ships and is the
        # dependency-free path for eager CPU dynamic quantization.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


for _name, _builder in cifar_builders().items():  # resnet8x4, resnet32x4, resnet20/56, wrn_16_2, wrn_40_2, ...
    MODELS.register(_name, _builder)
