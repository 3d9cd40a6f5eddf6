"""Cached soft targets that stay valid under augmentation (``distill.cached_views``). No Ray.

The teacher's logits are computed once on ``V`` seeded augmented **views** of every training example
(Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and consistent": the teacher
must see the student's input); each epoch the student draws one of them per example and gets back
exactly the view the teacher saw, so cached targets cost ``V`` teacher passes in total instead of one
per step.

A view is a function of ``(seed, example index, view)`` only: its translate offsets, flip and cutout
square — and with ``augment.mixup`` its partner and weight (core.mixup) — come from a counter-based hash
(splitmix64), not from a stream, so any worker regenerates any example's view without the others,
whatever the sharding or batch order.

Targets are stored per view as the top ``k`` logits (fp16) with their class indices (int16) and one
``rest`` logit (fp16) for every class outside the top k, chosen so that at ``T = 1`` the outside
classes share the teacher's remaining probability mass uniformly (Apple's dataset reinforcement
stores top-k this way). With ``k = C`` (the default for ``C <= 100``) the logits are kept whole.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from .config.schema import AugmentSpec
from .losses import few_classes
from .mixup import Mix, check_pool, mix_draws, mix_in, mixed_labels
from .topk import decode_topk, encode_topk
from .recipe import SPOT_RANGE, apply_augment, apply_cutout, cutout_centres

logger = logging.getLogger(__name__)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SALT_VIEW, _SALT_PICK, _SALT_SPOT = np.uint64(0x5EED0F), np.uint64(0x91C4), np.uint64(0xC07)
_SALT_MIX, _SALT_PARTNER, _SALT_LAM = np.uint64(0x313C), np.uint64(0xBA27), np.uint64(0x1A3B)
_EPOCH_CHUNK = 65_536  # rows softened at a time when an epoch's targets are computed at once


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele et al.'s splitmix64 finalizer on uint64 arrays (wrapping arithmetic): a bijective mix
    whose outputs pass BigCrush for consecutive inputs."""
    with np.errstate(over="ignore"):
        x = (x + _GOLDEN).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hash(seed: int, idx: np.ndarray, a, salt: np.uint64) -> np.ndarray:
    """``splitmix64(splitmix64(splitmix64(seed ^ salt) + idx) + a)``: uint64 per index (``a`` a
    number or one per index)."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.asarray([seed], np.uint64) ^ salt)
        h = _splitmix64(h + np.asarray(idx, np.uint64))
        return _splitmix64(h + np.asarray(a, np.uint64))


class Draws(NamedTuple):
    """The random draws that make views: translate offsets ``(2, *S)`` in ``[0, 2 * translate]`` (row,
    column; :func:`core.recipe.apply_augment`'s layout), flips ``(*S)`` bool, and cutout spots
    ``(2, *S)`` in ``[0, SPOT_RANGE)`` (:func:`core.recipe.apply_cutout`; None when cutout is off),
    and the mixup draws (:class:`core.mixup.Mix`; None when mixup is off), for a batch shape ``S``
    (``(B,)``, or ``(B, V)`` for every view)."""

    offsets: torch.Tensor
    flips: torch.Tensor
    spots: torch.Tensor | None
    mix: Mix | None = None

    def each(self, paired, flat) -> "Draws":
        """``paired`` applied to offsets and spots (their leading 2 kept), ``flat`` to flips and the mixup
        draws; spots and mix stay None."""
        return Draws(paired(self.offsets), flat(self.flips), None if self.spots is None else paired(self.spots),
                     None if self.mix is None else self.mix.each(flat))

    def pick(self, *index) -> "Draws":
        """The draws at ``index`` of the batch dimensions ``S``."""
        return self.each(lambda t: t[(slice(None), *index)], lambda t: t[index])

    def take(self, at: torch.Tensor) -> "Draws":
        """The draws at positions ``at`` (B,) of a flat batch ``(N,)``: :meth:`pick` for one index
        tensor, as ``index_select`` (the training loop's per-batch path; cheaper than fancy indexing)."""
        return self.each(lambda t: t.index_select(1, at), lambda t: t.index_select(0, at))

    def flatten(self) -> "Draws":
        """The batch dimensions ``S`` flattened to one, ``(B, V)`` -> ``(B V,)`` (row-major: ``b * V + v``)."""
        return self.each(lambda t: t.reshape(2, -1), lambda t: t.reshape(-1))


def view_draws(seed: int, idx, view, spec: AugmentSpec, population: int = 0) -> Draws:
    """The draws of view ``view`` (one for all, or one per example) of examples ``idx`` (B,), from
    ``(seed, idx, view)`` alone: offsets and flip from one hash, the cutout spot from another, the
    mixup draws (partners among ``population`` training examples) from three more (any shapes that
    broadcast: the batch shape is theirs)."""
    idx = np.asarray(idx, np.int64)
    h = _hash(seed, idx, view, _SALT_VIEW)
    span = np.uint64(2 * spec.translate + 1)
    rows = (h % span).astype(np.int64)
    cols = ((h >> np.uint64(16)) % span).astype(np.int64)
    flips = ((h >> np.uint64(40)) & np.uint64(1)).astype(bool)
    spots = None
    if spec.cutout > 0:
        g = _hash(seed, idx, view, _SALT_SPOT)
        spots = torch.from_numpy(np.stack([g % np.uint64(SPOT_RANGE), (g >> np.uint64(32)) % np.uint64(SPOT_RANGE)]).astype(np.int64))
    mix = None
    if spec.mixup > 0:
        mix = mix_draws(tuple(_hash(seed, idx, view, s) for s in (_SALT_MIX, _SALT_PARTNER, _SALT_LAM)), idx, spec,
                        population)
    return Draws(torch.from_numpy(np.stack([rows, cols])), torch.from_numpy(flips), spots, mix)


def render(x: torch.Tensor, draws: Draws, spec: AugmentSpec, fill: tuple[float, ...],
           pool: torch.Tensor | None = None) -> torch.Tensor:
    """The images ``(B, C, H, W)`` that ``draws`` (batch shape ``(B,)``) make of ``x`` under ``spec``
    (flips ignored when ``spec.hflip`` is off): the one place the teacher's cached views and the
    student's training views are drawn, so the two always match. Mixed views (``draws.mix``) blend in
    their partners from ``pool``, the whole training set ``(N, C, H, W)`` (:func:`core.mixup.mix_in`)."""
    shifted = apply_augment(x, draws.offsets, draws.flips if spec.hflip else None, spec.translate, fill)
    own = apply_cutout(shifted, draws.spots, spec.cutout, fill)
    if draws.mix is None:
        return own
    return mix_in(own, x, draws.mix, pool, lambda images, rows, flips: apply_augment(
        images, draws.offsets.index_select(1, rows), flips if spec.hflip else None, spec.translate, fill))


def make_view(x: torch.Tensor, idx, view, *, seed: int, spec: AugmentSpec, fill: tuple[float, ...],
              pool: torch.Tensor | None = None) -> torch.Tensor:
    """View ``view`` (one for all, or one per example) of the examples ``x`` ``(B, C, H, W)`` whose
    training-set indices are ``idx`` (B,); mixed views take partners from ``pool`` (the training set)."""
    population = 0 if pool is None else len(pool)
    return render(x, view_draws(seed, idx, view, spec, population), spec, fill, pool)


def all_draws(seed: int, idx, views: int, spec: AugmentSpec, population: int = 0) -> Draws:
    """:func:`view_draws` of every view ``0..V-1`` of examples ``idx`` (B,): batch shape ``(B, V)``, in
    one broadcast hash (``idx`` as ``(B, 1)`` against the views ``(V,)``)."""
    return view_draws(seed, np.asarray(idx, np.int64)[:, None], np.arange(views), spec, population)


def image_keys(draws: Draws, spec: AugmentSpec, height: int, width: int) -> torch.Tensor:
    """One int64 per view ``(*S)``, equal for two views of an example only when their draws make the
    same image: the offsets, the flip (when on) and the cutout centre pixel (when on). (Different keys
    can still make one image, e.g. a square erasing only shifted-in border: one more teacher pass,
    never a wrong target.)"""
    span = 2 * spec.translate + 1
    keys = (draws.offsets[0] * span + draws.offsets[1]) * 2 + (draws.flips.long() if spec.hflip else 0)
    if draws.spots is not None:
        row, col = cutout_centres(draws.spots, height, width)
        keys = (keys * height + row) * width + col
    if draws.mix is not None:  # a mixture is its view's own image: -1 - view (batch shape (B, V))
        keys = torch.where(draws.mix.lams < 1.0, -1 - torch.arange(keys.shape[-1]), keys)
    return keys


def pick_views(seed: int, idx, epoch: int, views: int) -> np.ndarray:
    """Which of the ``views`` cached views each example ``idx`` (B,) trains on in ``epoch``: uniform,
    independent per (seed, example, epoch), int64 ``(B,)``."""
    return (_hash(seed, np.asarray(idx, np.int64), epoch, _SALT_PICK) % np.uint64(views)).astype(np.int64)


@dataclass(frozen=True)
class ViewCache:
    """How the student gets views back: ``views`` V, the augmentation and its border ``fill``, the
    ``seed`` that drew them, the class count to decode top-k targets to, and (mixed views) the
    training set's size ``population`` that partners are drawn from."""

    views: int
    spec: AugmentSpec
    fill: tuple[float, ...]
    seed: int
    num_classes: int
    population: int = 0

    @classmethod
    def of_section(cls, d, bundle, *, fill: tuple[float, ...], seed: int, views: int | None = None) -> "ViewCache":
        """The view cache a ``distill`` section ``d`` asks for on ``bundle``'s training set (``views``:
        another count than ``d.cached_views``), its size the mixed views' partner population."""
        return cls(views=d.cached_views if views is None else views, spec=d.augment, fill=fill, seed=seed,
                   num_classes=bundle.num_classes, population=len(bundle.y_train))

    def draws(self, idx, views: int | None = None) -> Draws:
        """:func:`all_draws` of examples ``idx`` (B,) under this cache: batch shape ``(B, V)``."""
        return all_draws(self.seed, idx, self.views if views is None else views, self.spec, self.population)

    def build(self, teacher_logits, x: torch.Tensor, idx: torch.Tensor, k: int,
              batch_size: int = 256, pool: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The cache of examples ``x`` ``(N, C, H, W)`` with training-set indices ``idx`` (N,):
        ``[values (N, V, [T,] k), indices (same), rest (N, V, [T])]``; ``teacher_logits(x_view)`` gives
        ``(B, C)`` or ``(B, T, C)`` for up to ``batch_size`` views at a time.

        Views of one example that make the same image (the same offsets and, with flips on, the same
        flip; with cutout on, the same square) go through the teacher once and share its targets, so
        flips-only views cost at most two teacher passes per example whatever ``V``; mixed views
        (``spec.mixup``) blend in partners from ``pool``, the whole training set, each its own pass."""
        check_pool(self.spec, self.population, None if pool is None else len(pool))
        parts = []
        for start in range(0, len(x), batch_size):
            xb, ib = x[start:start + batch_size], idx[start:start + batch_size].numpy()
            draws = self.draws(ib)  # batch shape (B, V)
            keys = image_keys(draws, self.spec, *x.shape[2:])  # (B, V): a view's image, as one number
            source = (keys.unsqueeze(2) == keys.unsqueeze(1)).int().argmax(dim=2)  # (B, V): first view with that key
            rows, views = (source == torch.arange(self.views)).nonzero(as_tuple=True)  # the distinct images (P,)
            encoded = [encode_topk(teacher_logits(render(xb[r], draws.pick(r, v), self.spec, self.fill, pool)), k)
                       for r, v in zip(rows.split(batch_size), views.split(batch_size))]
            slot = torch.zeros(keys.shape, dtype=torch.long)  # (B, V): each distinct image's place in ``encoded``
            slot[rows, views] = torch.arange(len(rows))
            at = slot.gather(1, source)  # (B, V): the place of the image each view makes
            parts.append([torch.cat([e[j] for e in encoded])[at] for j in range(3)])
        return [torch.cat([p[j] for p in parts]) for j in range(3)]


class LocalViews:
    """One process's share of a view cache, ready to train on: its rows' training-set indices ``idx``
    (n,), the cached ``values, indices, rest`` (``(n, V, [T,] k)``, ``(n, V, [T])``), and every view's
    draws computed once here (batch shape ``(n V,)``; 17 bytes per pair, 33 with cutout, 13 more with mixup). Each epoch
    gathers every row's pair ``row * V + view`` once (its draws and, softened, its targets: ``n C``
    fp32 floats), so that a batch costs a few ``index_select`` by row instead
    of hashes and copies of its examples' whole ``(V, k)`` cache. Mixed views (``augment.mixup``) need
    ``pool``, the whole training set ``(x, y)`` their partners come from; their hard targets are the
    mixed labels ``(B, C)`` (:func:`core.mixup.mixed_labels`) instead of class indices."""

    def __init__(self, views: ViewCache, idx, cache: Sequence[torch.Tensor], pool: Sequence | None = None):
        self.views, self.idx = views, torch.as_tensor(idx)
        check_pool(views.spec, views.population, None if pool is None else len(pool[0]))
        self.pool = None if views.spec.mixup == 0 else [torch.as_tensor(a) for a in pool]
        values, indices, rest = (torch.as_tensor(c) for c in cache)
        n, v = values.shape[:2]
        # every (row, view) pair flattened to row * V + view: one index_select per batch and array
        self.values, self.indices, self.rest = (c.reshape(n * v, *c.shape[2:]) for c in (values, indices, rest))
        self.draws = views.draws(self.idx.numpy(), v).flatten()  # batch shape (n V,)
        self.whole = values.shape[-1] >= views.num_classes  # k = C: class order, nothing to scatter
        self.major = few_classes(views.num_classes)  # epoch targets stored (C, n) on a CPU: see batches

    def batches(self, batches: Iterable[tuple[torch.Tensor, ...]], epoch: int,
                soften: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """``(x, y, rows)`` batches (``rows`` index this share) -> ``(x_view, y, z_t)``: each example's
        view for ``epoch`` (:func:`pick_views`) and the teacher's logits on exactly that view.

        With ``soften`` (teacher logits ``(N, [T,] C)`` -> the probabilities ``(N, C)`` the loss uses, e.g.
        ``engine.teacher_probs`` at the run's temperature) the third element is ``soften(z_t)`` instead. For
        a whole cache (``k = C``) that is computed once per epoch for the share's ``n`` rows (``n C`` fp32
        floats, class-major when :func:`core.losses.few_classes`; at most twice the share's fp16 values),
        so a batch costs one ``index_select`` for its targets instead of a gather, a decode and a
        softmax; the values are the same as per batch."""
        cache = self.views
        picks = torch.from_numpy(pick_views(cache.seed, self.idx.numpy(), epoch, cache.views))  # (n,), once per epoch
        pairs = torch.arange(len(picks)) * cache.views + picks  # (n,): each row's pair ``row * V + view`` this epoch
        draws = self.draws.take(pairs)  # this epoch's draws per row, batch shape (n,)
        probs = self._epoch_probs(pairs, soften) if soften is not None and self.whole else None
        for x, y, rows in batches:
            drawn = draws.take(rows)
            x_view = render(x, drawn, cache.spec, cache.fill, None if self.pool is None else self.pool[0])
            if drawn.mix is not None:
                partner_y = self.pool[1].index_select(0, drawn.mix.partners)
                y = mixed_labels(y, partner_y, drawn.mix.lams, cache.num_classes)
            if probs is not None:  # (C, n) class-major or (n, C): the rows' columns or rows, as (B, C)
                yield x_view, y, (probs.index_select(1, rows).t() if self.major else probs.index_select(0, rows))
                continue
            z_t = self._logits(pairs.index_select(0, rows))
            yield x_view, y, (z_t if soften is None else soften(z_t))

    def _logits(self, at: torch.Tensor) -> torch.Tensor:
        """The teacher logits ``(B, [T,] C)`` float32 of the pairs ``at`` (B,)."""
        values = self.values.index_select(0, at)
        if self.whole:
            return values.float()
        return decode_topk(values, self.indices.index_select(0, at), self.rest.index_select(0, at), self.views.num_classes)

    def _epoch_probs(self, pairs: torch.Tensor, soften: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``soften`` of every row's logits this epoch: ``(C, n)`` contiguous when :attr:`major`, else
        ``(n, C)``; written chunk by chunk into one array (peak: it plus one chunk)."""
        n, c = len(pairs), self.views.num_classes
        probs = torch.empty((c, n) if self.major else (n, c))
        for start in range(0, n, _EPOCH_CHUNK):
            part = soften(self._logits(pairs[start:start + _EPOCH_CHUNK]))  # (chunk, C)
            (probs[:, start:start + len(part)] if self.major else probs[start:start + len(part)]).copy_(
                part.t() if self.major else part)
        return probs


def local_views(views: ViewCache | None, arrays: Sequence,
                pool: Sequence | None = None) -> tuple[list, LocalViews | None]:
    """Training arrays with a view cache, ``(x, y, idx, values, indices, rest)``, as ``[x, y, rows]``
    (``rows = 0..n-1``: what batches carry) and the :class:`LocalViews` that turns a batch's rows into
    views and targets (mixed views: partners from ``pool``, the training set's ``(x, y)``); without
    views, the arrays unchanged and None."""
    if views is None:
        return list(arrays), None
    x, y, idx, *cache = arrays
    return [x, y, torch.arange(len(y))], LocalViews(views, idx, cache, pool)
