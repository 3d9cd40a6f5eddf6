"""FitNets' hint term (Romero et al., ICLR 2015) for ``distill.method=fitnet``. No Ray.

A *hint* is the output ``h_t`` of a chosen teacher layer (the "hint" layer) that the output ``h_s``
of a chosen student layer (the "guided" layer) must predict through a learned connector ``r``:

    H = mean over the batch and every feature of (r(h_s) - h_t)^2          (MSE)

and the student trains on

    L = alpha * CE(z_s, y) + (1 - alpha) * KD(z_s, p_t) + hint_weight * H

in one stage, as mdistiller and torchdistill run FitNets (the paper trains the hint first, then KD).
The teacher runs online (the hint needs its features for the very batch the student sees), in
eval mode and without gradients; ``r`` trains with the student and is dropped at the end: the
artifact is the student alone.

Layers are module names of each model (``dict(model.named_modules())``; the registry's models are
``nn.Sequential``, so the top-level names are indices: the last block of a CIFAR ResNet's second
stage, FitNets' middle hint and mdistiller's ``HINT_LAYER 2``, is ``4`` of ``resnet8x4`` and ``12``
of ``resnet32x4``; ``5`` is the CNN's second pooled map) or ``auto``: the input of the model's last
``nn.Linear`` (its penultimate features, ``(B, D)``), which every registry model has. Connectors:

* ``(B, D_s) -> (B, D_t)``: ``Linear(D_s, D_t)``;
* ``(B, C_s, H_s, W_s) -> (B, C_t, H_t, W_t)``: 1x1 ``Conv2d(C_s, C_t)`` + ``BatchNorm2d(C_t)``
  (mdistiller's ConvReg without its ReLU, so a signed target can be matched); maps of different
  sizes are both average-pooled to ``(min(H_s, H_t), min(W_s, W_t))`` first.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

AUTO = "auto"


class HintError(ValueError):
    """A hint layer that does not exist or whose output a connector cannot map."""


class FeatureTap:
    """Keeps the last output of one layer of ``model`` (``auto``: the input of its last ``nn.Linear``)
    through a forward hook; ``value`` is that tensor after each forward pass."""

    def __init__(self, model: nn.Module, layer: str, *, role: str):
        self.value: torch.Tensor | None = None
        if layer == AUTO:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise HintError(f"the {role} has no nn.Linear, so hint layer 'auto' has nothing to tap; name a layer")
            self._handle = linears[-1].register_forward_pre_hook(self._keep_input)
            return
        modules = dict(model.named_modules())
        if layer not in modules or layer == "":
            names = [n for n in modules if n and "." not in n]
            raise HintError(f"the {role} has no layer {layer!r}; its top-level layers: {', '.join(names)}")
        self._handle = modules[layer].register_forward_hook(self._keep_output)

    def _keep_input(self, module, args) -> None:
        self.value = args[0]

    def _keep_output(self, module, args, output) -> None:
        self.value = output

    def remove(self) -> None:
        self._handle.remove()


def _connector(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """``r``: a Linear for ``(D_s,) -> (D_t,)``, a 1x1 conv + BatchNorm for ``(C_s, H, W) -> (C_t, H', W')``."""
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        return nn.Sequential(nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1, bias=False),
                             nn.BatchNorm2d(teacher_shape[0]))
    raise HintError(f"cannot regress a student feature of shape {list(student_shape)} onto a teacher feature of "
                    f"shape {list(teacher_shape)}: both must be (D,) vectors or (C, H, W) maps; choose other layers")


def _match_maps(h_s: torch.Tensor, h_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps average-pooled to the smaller spatial size (unchanged when sizes agree or for vectors)."""
    if h_s.dim() != 4 or h_s.shape[-2:] == h_t.shape[-2:]:
        return h_s, h_t
    size = (min(h_s.shape[-2], h_t.shape[-2]), min(h_s.shape[-1], h_t.shape[-1]))
    return F.adaptive_avg_pool2d(h_s, size), F.adaptive_avg_pool2d(h_t, size)


class Hint(nn.Module):
    """The connector ``r`` (this module's only parameters) and the taps on the student's and the
    teacher's layers; ``forward()`` is ``H`` for the batch both models last ran on."""

    def __init__(self, student: nn.Module, teacher: nn.Module, input_shape: Sequence[int], *,
                 student_layer: str = AUTO, teacher_layer: str = AUTO):
        super().__init__()
        taps = [FeatureTap(student, student_layer, role="student (distill.guided_layer)"),
                FeatureTap(teacher, teacher_layer, role="teacher (distill.hint_layer)")]
        self._taps = taps  # a plain list: not submodules, so the models' parameters stay theirs
        shapes = self._probe(student, teacher, input_shape)
        self.connector = _connector(*shapes)

    def _probe(self, student: nn.Module, teacher: nn.Module, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Per-example feature shapes from one forward pass of two zero inputs, in eval mode (no
        BatchNorm statistics change), each model's mode restored afterwards."""
        x = torch.zeros(2, *input_shape, device=next(student.parameters()).device)
        modes = [student.training, teacher.training]
        student.eval(), teacher.eval()
        with torch.no_grad():
            student(x), teacher(x.to(next(teacher.parameters()).device))
        student.train(modes[0]), teacher.train(modes[1])
        h_s, h_t = _match_maps(self._taps[0].value, self._taps[1].value)
        return [tuple(h_s.shape[1:]), tuple(h_t.shape[1:])]

    def forward(self) -> torch.Tensor:
        h_s, h_t = _match_maps(self._taps[0].value, self._taps[1].value)
        return F.mse_loss(self.connector(h_s), h_t.detach().to(h_s.dtype))

    def remove(self) -> None:
        """Detach the taps (the models run as before)."""
        for tap in self._taps:
            tap.remove()


def hint_for(kd, model: nn.Module, teachers: Sequence[nn.Module], input_shape: Sequence[int], *,
             seed: int) -> Hint | None:
    """FitNets' hint between ``model`` and the one online teacher when ``kd`` (engine.KDSettings) asks for
    it (``kd.method.hint``), else None; the connector's initialization is seeded by ``seed``, so every
    rank (and a resumed run, before it loads its checkpoint) builds the same one."""
    if kd is None or not kd.method.hint:
        return None
    if len(teachers) != 1:
        raise HintError(f"method fitnet needs one online teacher, got {len(teachers)} (distill.mode=online, no ensemble)")
    with torch.random.fork_rng(devices=[]):  # the caller's random stream (dropout, shuffles) is left as it was
        torch.manual_seed(seed)
        return Hint(model, teachers[0], input_shape, student_layer=kd.guided_layer,
                    teacher_layer=kd.hint_layer).to(next(model.parameters()).device)


@contextmanager
def tapped(hint: Hint | None) -> Iterator[Hint | None]:
    """``hint`` (or None) for the length of a training: its taps come off the models when the block
    ends, on an error too, so the caller's teacher never keeps a forward hook it did not add."""
    try:
        yield hint
    finally:
        if hint is not None:
            hint.remove()


__all__ = ["AUTO", "FeatureTap", "Hint", "HintError", "hint_for", "tapped"]
