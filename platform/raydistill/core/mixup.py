"""Mixed-up cached views: function matching (Beyer et al. 2022, "Knowledge distillation: a good
teacher is patient and consistent"). No Ray.

With ``augment.mixup = p`` a cached view (core.views) is, with probability ``p``, a mixture of the
example and a **partner** drawn from the whole training set,

    x_view = lam * view(x_i) + (1 - lam) * flip_j(shift(x_j)),      lam ~ Beta(a, a), a = augment.mixup_alpha,

where ``view(x_i)`` is the example's own view (offsets, flip, cutout) and the partner gets the same
offsets and a flip of its own. The teacher labels the mixture once (the cache), so the student
matches the teacher's function on images between the examples, not only on them; the hard term
learns the mixed label ``lam * onehot(y_i) + (1 - lam) * onehot(y_j)`` (Zhang et al. 2018). Every
draw (whether the view mixes, the partner, ``lam``, the partner's flip) comes from a counter-based
hash of ``(seed, example, view)`` (core.views), so any worker regenerates any view from the training
set alone. An unmixed view has ``lam = 1`` and itself as partner: the mixture is exactly its own view.

Without a view cache (online KD, whose teacher labels the mixed batch; the teacher; the student-alone
baseline of the same recipe) :func:`mix_batch` is classic mixup: the same rate, weights and label mixing,
with partners drawn from the batch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from .config.schema import AugmentSpec

_UNIT = float(2 ** -53)  # a 53-bit uniform in [0, 1) from the top bits of a 64-bit hash


class Mix(NamedTuple):
    """The mixup draws of a batch shape ``S``: ``partners`` int64 training-set indices, ``lams`` float32
    weights of the example's own view (1.0: not mixed), ``flips`` bool (the partner's mirror)."""

    partners: torch.Tensor
    lams: torch.Tensor
    flips: torch.Tensor

    def each(self, flat) -> "Mix":
        return Mix(flat(self.partners), flat(self.lams), flat(self.flips))


def uniform(h: np.ndarray) -> np.ndarray:
    """A float64 uniform in [0, 1) from the top 53 bits of each uint64 hash ``h``."""
    return (h >> np.uint64(11)).astype(np.float64) * _UNIT


def mix_draws(hashes: tuple[np.ndarray, np.ndarray, np.ndarray], idx: np.ndarray, spec: AugmentSpec,
              population: int) -> Mix:
    """The draws of views whose three mixup hashes are ``hashes = (h, g, k)`` (uint64, batch shape ``S``)
    and whose examples are ``idx`` (broadcast to ``S``): mixed when ``uniform(h) < spec.mixup`` (the top
    53 bits of ``h``), the partner's flip from the lowest bit of ``h``, the partner ``g mod population``
    and ``lam = F^-1(uniform(k))`` of Beta(a, a): three independent hashes, so that no draw is tied to
    another (a partner and its flip from one hash would be when ``population`` is a power-of-two multiple)."""
    if population < 1:
        raise ValueError(f"mixed views draw partners from the training set: population must be >= 1, got {population}")
    h, g, k = hashes
    mixed = uniform(h) < spec.mixup
    idx = np.broadcast_to(np.asarray(idx, np.int64), mixed.shape)
    partners = np.where(mixed, (g % np.uint64(population)).astype(np.int64), idx)
    lams = np.where(mixed, beta_quantile(uniform(k), spec.mixup_alpha), 1.0).astype(np.float32)
    flips = (h & np.uint64(1)).astype(bool) & mixed
    return Mix(torch.from_numpy(partners), torch.from_numpy(lams), torch.from_numpy(flips))


def beta_quantile(u: np.ndarray, a: float) -> np.ndarray:
    """``F^-1(u)`` of Beta(a, a) for uniforms ``u`` in [0, 1) (Beta(1, 1) is the uniform itself)."""
    if a == 1.0:
        return u
    from scipy.special import betaincinv  # scipy (a scikit-learn dependency) only when a != 1

    return betaincinv(a, a, u)


def mix_batch(x: torch.Tensor, y: torch.Tensor, spec: AugmentSpec, generator: torch.Generator,
              num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Classic mixup (Zhang et al. 2018) of a batch ``x`` ``(B, C, H, W)``, ``y`` ``(B,)``: each example
    with probability ``spec.mixup`` mixed with a random one of the batch, ``lam ~ Beta(a, a)``;
    returns the images and their mixed labels ``(B, num_classes)``. Draws only from ``generator``."""
    b = len(x)
    mixed = torch.rand(b, generator=generator) < spec.mixup
    partners = torch.where(mixed, torch.randperm(b, generator=generator), torch.arange(b))
    u = torch.rand(b, generator=generator, dtype=torch.float64).numpy()
    lams = torch.where(mixed, torch.from_numpy(beta_quantile(u, spec.mixup_alpha)).float(), torch.ones(b))
    return blend(x, x[partners], lams), mixed_labels(y, y[partners], lams, num_classes)


def check_pool(spec: AugmentSpec, population: int, size: int | None) -> None:
    """Mixed views need the whole training set (``size`` rows, training-set order) their partners index."""
    if spec.mixup > 0 and size != population:
        got = "no pool" if size is None else f"{size} rows"
        raise ValueError(f"mixed views (augment.mixup) draw partners from the whole training set of "
                         f"{population} examples, so they need all of it (pool); got {got}")


def mix_in(own: torch.Tensor, x: torch.Tensor, mix: Mix, pool, move) -> torch.Tensor:
    """The views ``own`` ``(B, C, H, W)`` (made of the batch ``x``) with their mixed rows blended with
    their partners from ``pool`` (the training set), each moved as its row's own view by
    ``move(images, rows, flips)``; only mixed rows fetch and move a partner. Never writes into ``x``."""
    if pool is None:
        raise ValueError("mixed views (augment.mixup) need the training set their partners come from (pool)")
    rows = (mix.lams < 1.0).nonzero().squeeze(1)
    if len(rows) == 0:
        return own
    partners = torch.as_tensor(pool).index_select(0, mix.partners.index_select(0, rows)).to(own.dtype)
    moved = move(partners, rows, mix.flips.index_select(0, rows))
    own = own.clone() if own is x else own
    own[rows] = blend(own[rows], moved, mix.lams.index_select(0, rows))
    return own


def blend(own: torch.Tensor, partner: torch.Tensor, lams: torch.Tensor) -> torch.Tensor:
    """``lam * own + (1 - lam) * partner`` per example, images ``(B, C, H, W)``, ``lams`` ``(B,)``;
    exactly ``own`` where ``lam = 1``."""
    lam = lams.to(own.dtype).view(-1, *([1] * (own.dim() - 1)))
    return torch.where(lam == 1.0, own, lam * own + (1.0 - lam) * partner)


def mixed_labels(y: torch.Tensor, partner_y: torch.Tensor, lams: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The hard targets of mixed views, ``lam * onehot(y) + (1 - lam) * onehot(y_partner)``: ``(B, C)``
    float32 rows summing to 1 (cross-entropy against a distribution)."""
    lam = lams.float().view(-1, 1)
    own = torch.nn.functional.one_hot(y.long(), num_classes).float()
    other = torch.nn.functional.one_hot(partner_y.long(), num_classes).float()
    return lam * own + (1.0 - lam) * other
