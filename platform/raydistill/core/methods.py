"""Logit distillation methods (``distill.method``): pure tensor functions, no Ray, no state.

Every method is a *soft term* ``D(z_s, p_t, y)`` that the student's loss mixes with the hard labels

    L = alpha * CE(z_s, t_y) + (1 - alpha) * w(epoch) * D(z_s, p_t, y)

(``alpha`` = ``distill.alpha``, ``w`` the method's linear warm-up, 1 without one). All of them use
the teacher's logits only, so they work with cached soft targets, Tune trials, teacher ensembles
(``p_t`` is then the ensemble's mixed probabilities) and federated client KD alike.

* ``kd`` — Hinton, Vinyals, Dean 2015: ``D = T^2 KL(p_t || softmax(z_s / T))`` with
  ``p_t = softmax(z_t / T)``.
* ``dkd`` — Decoupled KD, Zhao et al. CVPR 2022: the same KL split into a binary target-class term
  and a non-target-class term, re-weighted: ``D = T^2 (a * TCKD + b * NCKD)`` with
  ``TCKD = KL([p_t,y, 1 - p_t,y] || [q_y, 1 - q_y])`` and ``NCKD = KL(p^_t || q^)`` over the
  classes ``j != y``, ``p^_j = p_j / (1 - p_y)``; ``q = softmax(z_s / T)``. ``a = distill.dkd_alpha``,
  ``b = distill.dkd_beta``; ``w`` rises linearly over ``distill.dkd_warmup_epochs``.
  (Hinton's KD is ``a = 1 - p_t,y`` and ``b = 1 - p_t,y`` in the same decomposition, the paper's eq. 3.)
* ``dist`` — DIST, Huang et al. NeurIPS 2022 ("Knowledge Distillation from A Stronger Teacher"): match
  the *relations* of the two probability matrices ``P_s, P_t`` of shape ``(B, C)`` (both at ``T``)
  rather than their values: ``D = T^2 (b * (1 - mean_i rho(P_s[i, :], P_t[i, :]))
  + g * (1 - mean_c rho(P_s[:, c], P_t[:, c])))`` with ``rho`` the Pearson correlation, the first an
  inter-class relation per example, the second an intra-class relation per class across the batch
  (``b = distill.dist_beta``, ``g = distill.dist_gamma``; a batch of one has no intra-class term).
  It asks the student to rank classes and examples as the teacher does, not to copy its scale,
  which the paper reports helps most when the teacher is much stronger than the student.
  Correlation ignores scale, so DIST's students can come out underconfident (accuracy unaffected),
  and its gradient grows as the student's logits flatten (``|p - mean p|`` small): Adam or grad_clip.
* ``+lskd`` — logit standardization, Sun et al. CVPR 2024, usable with either: both logit vectors are
  z-scored per example before the temperature softmax, ``Z(z) = (z - mean(z)) / std(z)`` (std over the
  C classes with Bessel's correction, as the paper's code), so the student matches the teacher's
  logit *relations*, not its logit scale. ``lskd`` alone means ``kd+lskd``.
* ``fitnet`` — FitNets, Romero et al. ICLR 2015: ``kd`` plus ``hint_weight`` times the MSE between a
  student layer's output, mapped by a learned connector, and a teacher layer's output (core.hints).
  It needs the teacher's features, so it runs with ``distill.mode=online`` and one teacher.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BASES = ("kd", "dkd", "dist")
CHOICES = ("kd", "dkd", "dist", "lskd", "kd+lskd", "dkd+lskd", "dist+lskd", "fitnet")
_EPS = 1e-7  # the paper's code adds it to the std
TERM_WEIGHTS = {"dkd": ("dkd_alpha", "dkd_beta"), "dist": ("dist_beta", "dist_gamma")}  # a base's two weights
HINT_KNOBS = ("hint_weight", "hint_layer", "guided_layer")  # fitnet's (core.hints); keys of the distill section
_RHO_EPS = 1e-8  # DIST's code adds it to the product of norms in the correlation


@dataclass(frozen=True)
class Method:
    """A parsed ``distill.method``: the base soft term, whether logits are standardized, and whether
    a FitNets hint term (core.hints) is added."""

    base: str = "kd"
    standardize: bool = False
    hint: bool = False

    @property
    def name(self) -> str:
        return "fitnet" if self.hint else self.base + ("+lskd" if self.standardize else "")


def parse_method(name: str) -> Method:
    """A name of ``CHOICES`` (``"kd"``, ``"dist+lskd"``, ...) -> :class:`Method`; ValueError otherwise."""
    if name not in CHOICES:
        raise ValueError(f"unknown distillation method {name!r}; choose one of {', '.join(CHOICES)}")
    if name == "fitnet":
        return Method("kd", False, True)
    if name == "lskd":
        return Method("kd", True)
    base, _, mod = name.partition("+")
    return Method(base, mod == "lskd")


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """``Z(z) = (z - mean(z)) / (std(z) + 1e-7)`` along the last (class) axis; shape kept."""
    mean = logits.mean(dim=-1, keepdim=True)
    return (logits - mean) / (logits.std(dim=-1, keepdim=True) + _EPS)


def warmup_weight(epoch: int, warmup_epochs: int) -> float:
    """``min(epoch / warmup_epochs, 1)`` for the 1-based ``epoch``; 1 without a warm-up."""
    return 1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0)


def _kl_rows(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_j p_j (log p_j - log q_j)`` per row, with ``0 log 0 = 0``: ``(B, C)`` -> ``(B,)``."""
    return (torch.xlogy(p, p) - p * log_q).sum(dim=-1)


def kd_term(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_b KL(p_t || softmax(z_s / T))``: ``(B, C)``, ``(B, C)`` -> scalar."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return _kl_rows(teacher_probs, log_q).mean() * temperature**2


def dkd_term(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor,
             temperature: float, *, dkd_alpha: float, dkd_beta: float) -> torch.Tensor:
    """``T^2 * mean_b (a * TCKD + b * NCKD)`` (module docstring): ``(B, C)``, ``(B, C)``, ``(B,)`` -> scalar.

    Computed in log space from the student's logits (no ``1 - q_y`` cancellation); a teacher that puts
    all its mass on the target has ``p^ = 0`` and contributes no NCKD.
    """
    scaled = student_logits / temperature  # (B, C)
    target = F.one_hot(labels, scaled.shape[-1]).bool()  # (B, C)
    log_norm = torch.logsumexp(scaled, dim=-1)  # (B,)
    others = scaled.masked_fill(target, float("-inf"))  # (B, C), target class removed
    log_rest = torch.logsumexp(others, dim=-1)  # log sum_{j != y} exp(z_j / T)
    log_b_s = torch.stack([scaled.gather(1, labels[:, None])[:, 0] - log_norm, log_rest - log_norm], dim=-1)
    p_y = teacher_probs.gather(1, labels[:, None])[:, 0]  # (B,)
    b_t = torch.stack([p_y, (1.0 - p_y).clamp_min(0.0)], dim=-1)  # (B, 2)
    tckd = _kl_rows(b_t, log_b_s)
    rest_t = teacher_probs.masked_fill(target, 0.0)
    p_hat = rest_t / rest_t.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(rest_t.dtype).tiny)
    log_q_hat = (others - log_rest[:, None]).masked_fill(target, 0.0)  # log q^ (0 where p^ is 0)
    nckd = _kl_rows(p_hat, log_q_hat)
    return (dkd_alpha * tckd + dkd_beta * nckd).mean() * temperature**2


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: ``(N, K)``, ``(N, K)`` -> ``(N,)``,
    ``sum_k a'_k b'_k / (|a'| |b'| + 1e-8)`` with ``a' = a - mean_k a``; a constant row gives 0."""
    a, b = a - a.mean(dim=-1, keepdim=True), b - b.mean(dim=-1, keepdim=True)
    return (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1) + _RHO_EPS)


def dist_term(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, *,
              dist_beta: float, dist_gamma: float) -> torch.Tensor:
    """``T^2 (b * inter + g * intra)`` (module docstring): ``(B, C)``, ``(B, C)`` -> scalar, with
    ``inter = 1 - mean_i rho(P_s[i], P_t[i])`` over the B examples and ``intra = 1 - mean_c rho(P_s[:, c],
    P_t[:, c])`` over the C classes (0 for a batch of one, where a class column has no spread)."""
    p_s = F.softmax(student_logits / temperature, dim=-1)
    inter = 1.0 - pearson_rows(p_s, teacher_probs).mean()
    intra = 1.0 - pearson_rows(p_s.T, teacher_probs.T).mean() if len(p_s) > 1 else p_s.new_zeros(())
    return (dist_beta * inter + dist_gamma * intra) * temperature**2


def soft_term(method: Method, student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor,
              temperature: float, *, dkd_alpha: float = 1.0, dkd_beta: float = 8.0, dist_beta: float = 1.0,
              dist_gamma: float = 1.0) -> torch.Tensor:
    """The method's ``D`` on the student's logits (z-scored first under ``+lskd``; ``teacher_probs``
    are then already from standardized teacher logits, see ``engine.teacher_probs``). ``labels``: ``(B,)``,
    or ``(B, C)`` distributions (mixup or mixed views, core.mixup), whose larger part is DKD's target class."""
    z_s = standardize(student_logits) if method.standardize else student_logits
    if method.base == "dkd":
        labels = labels if labels.dim() == 1 else labels.argmax(dim=-1)
        return dkd_term(z_s, teacher_probs, labels, temperature, dkd_alpha=dkd_alpha, dkd_beta=dkd_beta)
    if method.base == "dist":
        return dist_term(z_s, teacher_probs, temperature, dist_beta=dist_beta, dist_gamma=dist_gamma)
    return kd_term(z_s, teacher_probs, temperature)


__all__ = ["BASES", "CHOICES", "TERM_WEIGHTS", "HINT_KNOBS", "Method", "parse_method", "standardize", "warmup_weight",
           "kd_term", "dkd_term",
           "pearson_rows", "dist_term", "soft_term"]
