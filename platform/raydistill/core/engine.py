"""Plain PyTorch train / distill / evaluate steps. No Ray import: Ray adapters call these.

Batches are tuples of tensors: ``(x, y)`` with ``x`` ``(B, C, H, W)`` and ``y`` ``(B,)``, or
``(x, y, z_t)`` with cached teacher logits ``z_t`` ``(B, C)`` (one teacher) or ``(B, K, C)``
(an ensemble of K teachers), or — cached views, ``probs=True`` — ``(x, y, p_t)`` with the teachers'
softened probabilities ``p_t = teacher_probs(z_t)`` ``(B, C)`` already computed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config.schema import RecipeSection
from .layout import conv_layout, teacher_pass
from .hints import hint_for, tapped
from .losses import ensemble_soft_targets, kd_loss_from_probs, soft_targets
from .methods import Method, parse_method, soft_term, standardize, warmup_weight
from .recipe import augmented, make_optimizer, make_scheduler
from .views import ViewCache, local_views

__all__ = ["KDSettings", "make_optimizer", "iterate_batches", "read_only_tensors", "rank_shard", "teacher_probs",
           "view_softener", "run_teachers", "batch_loss", "train_epoch", "conv_layout", "teacher_pass",
           "teacher_logits", "predict_logits", "teacher_view_cache", "evaluation_sums", "metrics_from_sums",
           "evaluate", "fit"]


@dataclass(frozen=True, kw_only=True)
class KDSettings:
    """What the distillation step needs besides the batch."""

    temperature: float  # from distill.temperature (the config is the one home of defaults)
    alpha: float  # weight of the hard-label CE; 1 - alpha weighs the soft term
    teacher_weights: tuple[float, ...] = (1.0,)
    method: Method = Method()  # distill.method (core.methods): kd | dkd, optionally +lskd
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dist_beta: float = 1.0  # dist: weight of the inter-class relation
    dist_gamma: float = 1.0  # dist: weight of the intra-class relation
    warmup_epochs: int = 0  # the soft term's linear warm-up (distill.dkd_warmup_epochs)
    hint_weight: float = 0.0  # fitnet: weight of the hint MSE (core.hints)
    hint_layer: str = "auto"  # fitnet: teacher layer
    guided_layer: str = "auto"  # fitnet: student layer

    @classmethod
    def for_distill(cls, d, *, teacher_weights: Sequence[float] = (1.0,), temperature: float | None = None,
                    alpha: float | None = None) -> "KDSettings":
        """What a ``distill`` config section asks for (``temperature``/``alpha`` given: a Tune trial's point)."""
        return cls(temperature=float(d.temperature if temperature is None else temperature),
                   alpha=float(d.alpha if alpha is None else alpha), teacher_weights=tuple(teacher_weights),
                   method=parse_method(d.method), dkd_alpha=d.dkd_alpha, dkd_beta=d.dkd_beta,
                   dist_beta=d.dist_beta, dist_gamma=d.dist_gamma,
                   warmup_epochs=d.dkd_warmup_epochs, hint_weight=d.hint_weight, hint_layer=d.hint_layer,
                   guided_layer=d.guided_layer)

    def soft_weight(self, epoch: int) -> float:
        """``(1 - alpha) * w(epoch)``: the soft term's weight in epoch ``epoch`` (1-based)."""
        return (1.0 - self.alpha) * warmup_weight(epoch, self.warmup_epochs)


def iterate_batches(arrays: Sequence[np.ndarray | torch.Tensor], batch_size: int, *, shuffle: bool,
                    seed: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield aligned mini-batches of ``arrays`` (same first dimension), shuffled by ``seed``."""
    tensors = [torch.as_tensor(a) for a in arrays]
    n = len(tensors[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield tuple(t[idx] for t in tensors)


def read_only_tensors(arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Zero-copy tensors over read-only arrays (the object store's): only ever read, since batches
    are gathered by index, which copies. Silences torch's warning about non-writable arrays."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [torch.as_tensor(a) for a in arrays]


def rank_shard(arrays: Sequence, rank: int, world: int) -> list:
    """Rank ``rank``'s contiguous share of aligned ``arrays``: ``n // world`` rows from
    ``rank * (n // world)``, the same length on every rank so DDP's all-reduces line up step for step
    (at most ``world - 1`` rows are left out, never the same ones twice: ranks reshuffle their own share)."""
    n = len(arrays[0]) // world
    return [a[rank * n:(rank + 1) * n] for a in arrays]


def teacher_probs(teacher_logits: torch.Tensor, kd: KDSettings) -> torch.Tensor:
    """Softened teacher probabilities ``(B, C)`` from logits ``(B, C)`` or ``(B, K, C)`` (each
    teacher's logits z-scored first under ``+lskd``)."""
    if kd.method.standardize:
        teacher_logits = standardize(teacher_logits)
    if teacher_logits.dim() == 2:
        return soft_targets(teacher_logits, kd.temperature)
    per_teacher = [teacher_logits[:, k] for k in range(teacher_logits.shape[1])]
    return ensemble_soft_targets(per_teacher, kd.teacher_weights, kd.temperature)


def view_softener(kd: KDSettings | None):
    """What ``core.views.LocalViews.batches`` softens cached logits with (:func:`teacher_probs` at
    ``kd``), so the training loop gets probabilities; None (logits, which nothing reads) without
    distillation or at ``alpha = 1`` (plain cross-entropy)."""
    return None if kd is None or kd.alpha == 1.0 else (lambda z_t: teacher_probs(z_t, kd))


@torch.no_grad()
def run_teachers(teachers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Online teacher logits: ``(B, C)`` for one teacher, ``(B, K, C)`` for K."""
    logits = [t(x) for t in teachers]
    return logits[0] if len(logits) == 1 else torch.stack(logits, dim=1)


def batch_loss(model: nn.Module, batch: tuple[torch.Tensor, ...], *, kd: KDSettings | None,
               teachers: Sequence[nn.Module] = (), label_smoothing: float = 0.0, epoch: int = 1,
               hint: nn.Module | None = None, probs: bool = False) -> torch.Tensor:
    """Cross-entropy (with ``label_smoothing``) when ``kd`` is None; else
    ``alpha * CE + (1 - alpha) * w(epoch) * D`` (core.methods) against cached (3rd element; with
    ``probs`` already :func:`teacher_probs` of the logits) or online (``teachers``, run on the same
    possibly augmented ``x``) teacher logits; ``epoch`` is 1-based.
    With a ``hint`` (core.hints.Hint, method fitnet) ``+ hint_weight * H`` for this batch."""
    x, y = batch[0], batch[1]
    logits = model(x)
    if kd is None or (kd.alpha == 1.0 and hint is None):
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    z_t = batch[2] if len(batch) > 2 else run_teachers(teachers, x)
    loss = _logit_loss(logits, z_t, y, kd, label_smoothing, epoch, probs=probs and len(batch) > 2)
    return loss if hint is None else loss + kd.hint_weight * hint()


def _logit_loss(logits: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, kd: KDSettings, label_smoothing: float,
                epoch: int, *, probs: bool = False) -> torch.Tensor:
    """``alpha * CE + (1 - alpha) * w(epoch) * D`` from the student's and the teachers' logits (``probs``:
    ``z_t`` is already :func:`teacher_probs` of them)."""
    if kd.alpha == 1.0:
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    probs = z_t if probs else teacher_probs(z_t.float(), kd)
    if kd.method.base == "kd" and not kd.method.standardize and kd.warmup_epochs <= 0:  # Hinton's KD: one fused node (losses._KDLoss)
        return kd_loss_from_probs(logits, probs, y, temperature=kd.temperature, alpha=kd.alpha,
                                  label_smoothing=label_smoothing)
    soft = soft_term(kd.method, logits, probs, y, kd.temperature, dkd_alpha=kd.dkd_alpha, dkd_beta=kd.dkd_beta,
                     dist_beta=kd.dist_beta, dist_gamma=kd.dist_gamma)
    hard = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return kd.alpha * hard + kd.soft_weight(epoch) * soft


def train_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], optimizer: torch.optim.Optimizer,
                *, kd: KDSettings | None = None, teachers: Sequence[nn.Module] = (),
                device: torch.device | str = "cpu", label_smoothing: float = 0.0, grad_clip: float = 0.0,
                epoch: int = 1, hint: nn.Module | None = None, probs: bool = False) -> float:
    """One pass over ``batches`` (epoch ``epoch``, 1-based: a soft term's warm-up); returns the
    example-weighted mean loss. ``hint`` (method fitnet) trains with the model; ``optimizer`` holds
    its parameters too. ``probs``: the batches' third element is the teacher's softened probabilities
    (:func:`teacher_probs`, e.g. ``core.views`` with ``soften``), not its logits."""
    model.train()
    trained = [model] if hint is None else [model, hint]
    if hint is not None:
        hint.train()
    for t in teachers:
        t.eval()
    total, count = 0.0, 0
    for batch in batches:
        batch = tuple(b.to(device, non_blocking=True) for b in batch)
        loss = batch_loss(model, batch, kd=kd, teachers=teachers, label_smoothing=label_smoothing, epoch=epoch,
                          hint=hint, probs=probs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for m in trained for p in m.parameters()], grad_clip)
        optimizer.step()
        total += float(loss.detach()) * len(batch[1])
        count += len(batch[1])
    return total / max(count, 1)


@torch.no_grad()
def teacher_logits(teachers: Sequence[nn.Module], x: np.ndarray | torch.Tensor, *, batch_size: int = 1024,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """The teachers' logits for inputs ``(N, C_in, H, W)``: ``(N, C)`` for one teacher, ``(N, K, C)``
    for K (``N = 0`` too), on the CPU, in eval mode; conv teachers run channels-last on a CPU
    (:func:`conv_layout`: ~2x faster for a conv 32-64 teacher here, ``benchmarks/teacher_layout.py``),
    with the same values up to float rounding."""
    with teacher_pass(teachers, device):
        out = [run_teachers(teachers, torch.as_tensor(x[i:i + batch_size]).to(device)).cpu()
               for i in range(0, len(x), batch_size) or [0]]  # an empty x: one empty batch, for the shape
    return torch.cat(out)


def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 1024,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Logits ``(N, C)`` of one model for inputs ``(N, C_in, H, W)``, in eval mode (:func:`teacher_logits`)."""
    return teacher_logits([model], x, batch_size=batch_size, device=device).numpy()


@torch.no_grad()
def teacher_view_cache(views: ViewCache, teachers: Sequence[nn.Module], x: torch.Tensor, idx: torch.Tensor,
                       k: int, *, device: torch.device | str = "cpu", pool=None) -> list[torch.Tensor]:
    """``views.build`` (core.views: ``[values, indices, rest]``) for examples ``x`` ``(N, C_in, H, W)``
    with training-set indices ``idx`` ``(N,)``, top-``k`` (mixed views: partners from ``pool``, the
    training images), with the teachers in eval mode and, on a CPU,
    channels-last (:func:`conv_layout`: ~2x faster for a conv 32-64 teacher on 8 views here,
    ``benchmarks/teacher_layout.py``; the same values up to float rounding)."""
    with teacher_pass(teachers, device):
        return views.build(lambda xv: run_teachers(teachers, xv.to(device)).cpu(), x, idx, k, pool=pool)


@torch.no_grad()
def evaluation_sums(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]],
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """``[sum of CE loss, correct, count]`` as a float64 tensor (sums all-reduce across ranks). A row
    of logits holding NaN/inf is never correct (``argmax`` of NaNs is class 0, which would score a
    broken model at the share of class 0), and makes the loss NaN/inf."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for batch in batches:
        x, y = batch[0].to(device), batch[1].to(device)
        logits = model(x)  # (B, K)
        sums[0] += float(F.cross_entropy(logits, y, reduction="sum"))
        sums[1] += float(((logits.argmax(dim=-1) == y) & torch.isfinite(logits).all(dim=-1)).sum())
        sums[2] += len(y)
    return sums


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """Mean loss and accuracy from summed ``[loss, correct, count]``; None for both when count is 0
    (``data.val_fraction: 0`` leaves no validation split)."""
    loss, correct, count = (float(v) for v in sums)
    if count == 0:
        return {"loss": None, "accuracy": None, "count": 0}
    return {"loss": loss / count, "accuracy": correct / count, "count": int(count)}


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1024,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``(x, y)``."""
    sums = evaluation_sums(model, iterate_batches([x, y], batch_size, shuffle=False), device)
    return metrics_from_sums(sums)


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, batch_size: int,
        seed: int = 0, recipe: RecipeSection | None = None, kd: KDSettings | None = None,
        teacher_logits: np.ndarray | None = None, teachers: Sequence[nn.Module] = (),
        fill: tuple[float, ...] | None = None, device: torch.device | str = "cpu",
        views: ViewCache | None = None, view_cache: Sequence[torch.Tensor] = (), num_classes: int = 0) -> list[float]:
    """Single-process training with ``recipe`` (optimizer, schedule, augmentation; Adam at a constant
    lr when None): in-process students, benchmarks; method fitnet trains its connector alongside
    (``teachers`` online); with ``views`` the student trains on cached views (``view_cache`` =
    ``ViewCache.build`` of all of ``x``) instead of ``recipe.augment`` (whose ``mixup`` needs
    ``num_classes``). Returns per-epoch mean losses."""
    recipe = recipe or RecipeSection()
    hint = hint_for(kd, model, teachers, tuple(np.shape(x)[1:]), seed=seed + 1)  # fitnet only
    with tapped(hint), conv_layout([model, hint, *teachers], device):  # taps off at the end; channels-last on a CPU
        optimizer = make_optimizer(model if hint is None else nn.ModuleList([model, hint]), lr, recipe)
        scheduler = make_scheduler(optimizer, recipe, epochs)
        arrays = [x, y] if teacher_logits is None else [x, y, teacher_logits]
        if views is not None:
            arrays, local = local_views(views, [x, y, torch.arange(len(y)), *view_cache], pool=(x, y))
        soften = view_softener(kd) if views is not None else None
        losses = []
        for epoch in range(epochs):
            batches = iterate_batches(arrays, batch_size, shuffle=True, seed=seed + epoch)
            batches = (local.batches(batches, epoch, soften=soften) if views is not None else
                       augmented(batches, recipe.augment, fill, seed=seed + epoch + 1, num_classes=num_classes))
            losses.append(train_epoch(model, batches, optimizer, kd=kd, teachers=teachers, device=device,
                                      label_smoothing=recipe.label_smoothing, grad_clip=recipe.grad_clip,
                                      epoch=epoch + 1, hint=hint, probs=soften is not None))
            scheduler.step()
    return losses
