"""Top-k storage of cached teacher logits (core.views): fp16 values, int16 class indices and one
``rest`` logit per row, so that at ``T = 1`` the classes outside the top k share the teacher's
remaining probability mass uniformly (Apple's dataset reinforcement stores top-k this way). No Ray.
"""
from __future__ import annotations

import torch

DEFAULT_TOPK_ABOVE = 10  # top-k kept per view when C > 100 and distill.cache_topk is 0 (auto)


def resolve_topk(topk: int, num_classes: int) -> int:
    """``distill.cache_topk``: 0 (auto) keeps every class when ``C <= 100``, else the top 10; never above C."""
    if topk <= 0:
        return num_classes if num_classes <= 100 else DEFAULT_TOPK_ABOVE
    return min(topk, num_classes)


def encode_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` storage of logits ``(..., C)``: values fp16 ``(..., k)``, class indices int16
    ``(..., k)`` and the rest logit fp16 ``(...)``.

    With ``lse = logsumexp(z)``, ``p = softmax(z)`` and top-k set ``S``, the rest mass is
    ``m = 1 - sum_{i in S} p_i``; each class outside ``S`` gets ``r = lse + log(m / (C - k))`` (``m``
    floored at 1e-12 so ``r`` stays finite), so that ``softmax`` of the decoded logits keeps ``p_i`` on
    ``S`` and spreads ``m`` uniformly elsewhere. ``k >= C``: the logits whole, in class order
    (``indices = 0..C-1``, so :func:`decode_topk` reads them without a scatter), ``r`` unused (the min).
    """
    z = logits.float()
    c = z.shape[-1]
    if k >= c:
        indices = torch.arange(c, dtype=torch.int16).expand(z.shape).contiguous()
        return z.half(), indices, z.min(dim=-1).values.half()
    values, indices = z.topk(k, dim=-1)
    lse = torch.logsumexp(z, dim=-1)
    kept = torch.exp(values - lse.unsqueeze(-1)).sum(-1)
    rest = lse + torch.log((1.0 - kept).clamp_min(1e-12) / (c - k))
    return values.half(), indices.to(torch.int16), rest.half()


def decode_topk(values: torch.Tensor, indices: torch.Tensor, rest: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits ``(..., C)`` float32 back from :func:`encode_topk`'s arrays (``k = C``: the values, which
    :func:`encode_topk` stores in class order)."""
    if values.shape[-1] >= num_classes:
        return values.float()
    out = rest.float().unsqueeze(-1).expand(*rest.shape, num_classes).clone()
    return out.scatter(-1, indices.long(), values.float())


def cache_bytes(examples: int, views: int, teachers: int, k: int) -> int:
    """Bytes of a view cache: per (example, view, teacher) ``k`` fp16 values + ``k`` int16 indices
    + one fp16 rest logit, i.e. ``N * V * T * (4k + 2)``."""
    return examples * views * teachers * (4 * k + 2)
