"""Distillation losses: pure tensor functions, no Ray, no state."""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F


FP32_LANES = {"AVX512": 16, "AVX2": 8}  # fp32 per SIMD vector of the CPU kernels torch dispatches to


@functools.cache
def class_major_below() -> int:
    """Class counts below this run class-major on a CPU: one fp32 vector of the kernels torch uses here
    (``torch.backends.cpu.get_cpu_capability()``: 16 on AVX-512, 8 on AVX2; 0, i.e. never, elsewhere)."""
    return FP32_LANES.get(torch.backends.cpu.get_cpu_capability(), 0)


def few_classes(classes: int) -> bool:
    """Whether ``classes`` is fewer than one SIMD vector of fp32 holds (:func:`class_major_below`), where a
    CPU softmax over them is faster class-major (:func:`class_major`)."""
    return 1 < classes < class_major_below()


def class_major(logits: torch.Tensor) -> bool:
    """Whether a softmax over the class axis of ``(B, C)`` ``logits`` runs faster on the ``(C, B)``
    transpose (a CPU tensor with :func:`few_classes`). PyTorch's CPU kernel vectorizes along the class
    axis, and with fewer classes than one vector holds it takes a slow path: ``log_softmax`` of ``(256, 10)`` 39 us row-major vs 6 us
    class-major on AVX-512, where from 16 classes on the row layout wins (256 x 16: 4 vs 10 us); with
    AVX2 kernels the turn is at 8 (``benchmarks/softmax_layout.py``, torch 2.14, 1 thread, fp32). Same
    values either way (the same sums per row)."""
    return logits.device.type == "cpu" and logits.dim() == 2 and few_classes(logits.shape[-1])


def softmax_classes(logits: torch.Tensor) -> torch.Tensor:
    """``softmax`` over the last (class) axis of ``(..., C)`` logits, same shape out; class-major when
    :func:`class_major` (then the result is the transpose view of a contiguous ``(C, B)``)."""
    if class_major(logits):
        return F.softmax(logits.t().contiguous(), dim=0).t()
    return F.softmax(logits, dim=-1)


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(z_t / T)`` over the class axis: ``(B, C)`` -> ``(B, C)`` probabilities (or ``(..., C)``)."""
    return softmax_classes(teacher_logits / temperature)


def ensemble_soft_targets(teacher_logits: Sequence[torch.Tensor], weights: Sequence[float],
                          temperature: float) -> torch.Tensor:
    """Weighted mixture of the teachers' softened probabilities.

    ``p = sum_k w_k softmax(z_k / T)`` with ``w_k = weights[k] / sum(weights)``;
    each ``z_k`` is ``(B, C)``, the result ``(B, C)`` sums to 1 per row. Probabilities are
    mixed, not logits: the mixture is a proper distribution whatever the teachers' logit scales.
    With one teacher this is exactly ``softmax(z / T)`` (the weight normalizes to 1.0).
    """
    if len(teacher_logits) != len(weights) or not teacher_logits:
        raise ValueError(f"need one weight per teacher and at least one teacher; got {len(teacher_logits)} "
                         f"teachers' logits and {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("teacher weights must sum to > 0")
    mix = sum((w / total) * soft_targets(z, temperature) for z, w in zip(teacher_logits, weights))
    return mix


class _KDLoss(torch.autograd.Function):
    """The KD loss and its gradient as one autograd node.

    For a small student the soft term's cost is per-op overhead, not arithmetic: written with
    ``log_softmax`` / ``kl_div`` / ``cross_entropy`` under autograd it adds ~20 forward and backward
    ops to every step (~8% of a 2 ms MLP step). Here the forward computes the value and the
    closed-form gradient together, and the backward is one multiply:

        dL/dz_s = alpha/B * (softmax(z_s) - t_y) + (1 - alpha) * T/B * (softmax(z_s/T) - p_t)

    (the T^2 of the loss times the 1/T of d(z_s/T)/dz_s), where ``t_y = (1 - eps) * onehot(y) + eps/C``
    is the label-smoothed hard target (``eps = 0``: the one-hot); labels given as a distribution per row
    ``(B, C)`` (mixup or mixed views, core.mixup) stand for ``onehot(y)``. The teacher side gets no gradient.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_probs, labels, temperature: float, alpha: float, smoothing: float):
        batch, classes = student_logits.shape
        # class-major (C, B) when that softmax is faster (class_major), else (B, C); ``d`` is the class axis.
        # Few ops on purpose: at B x C = 256 x 10 each costs its dispatch (~3 us), not its arithmetic.
        d = 0 if class_major(student_logits) else 1
        z = student_logits.t().contiguous() if d == 0 else student_logits
        p = teacher_probs.t().contiguous() if d == 0 else teacher_probs  # free when soft_targets made it so
        log_q = F.log_softmax(z * (1.0 / temperature), dim=d)  # softened student
        # kl_div(log q, p) = sum p (log p - log q) over the batch, with 0 log 0 = 0
        value = F.kl_div(log_q, p, reduction="sum") * ((1.0 - alpha) * temperature**2 / batch)
        log_p = F.log_softmax(z, dim=d) if alpha > 0.0 else None  # for the hard CE
        t_y = None  # labels as a distribution (B, C): t_y itself, in z's layout
        if labels.dim() == 2:
            t_y = (labels.t() if d == 0 else labels) * (1.0 - smoothing) + smoothing / classes
        if log_p is not None and t_y is not None:
            value = torch.add(value, -(t_y * log_p).sum() / batch, alpha=alpha)
        elif log_p is not None:  # CE against t_y = (1 - eps) onehot + eps/C (nll_loss wants (B, C))
            hard = F.nll_loss(log_p.t() if d == 0 else log_p, labels)
            if smoothing > 0.0:
                hard = hard * (1.0 - smoothing) - log_p.sum() * (smoothing / (batch * classes))
            value = torch.add(value, hard, alpha=alpha)
        if ctx.needs_input_grad[0]:  # a loss only looked at (logits without grad) skips the gradient
            grad = log_q.exp_().sub_(p).mul_((1.0 - alpha) * temperature / batch)
            if log_p is not None and t_y is not None:
                grad.add_(log_p.exp_().sub_(t_y), alpha=alpha / batch)
            elif log_p is not None:  # softmax(z_s) - t_y: minus eps/C everywhere, minus 1 - eps at the label
                hard_grad = log_p.exp_().sub_(smoothing / classes) if smoothing > 0.0 else log_p.exp_()
                at = labels.view(1, batch) if d == 0 else labels.view(batch, 1)
                grad.add_(hard_grad.scatter_(d, at, smoothing - 1.0, reduce="add"), alpha=alpha / batch)
            ctx.save_for_backward(grad.t().contiguous() if d == 0 else grad)  # (B, C), row-major for the matmuls
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None, None, None, None


def kd_loss_from_probs(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor,
                       *, temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """:func:`kd_loss` with the teacher given as softened probabilities ``(B, C)`` (ensembles).

    ``teacher_probs`` is a target: it gets no gradient. ``labels``: class indices ``(B,)``, or a target
    distribution per row ``(B, C)`` (mixup or mixed views, core.mixup), which the hard term then learns.
    """
    if alpha >= 1.0:
        return F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_probs.shape)} must have the same (B, C) shape")
    # KL(p_t || p_s) summed over classes, averaged over the batch; the T^2 factor keeps the soft
    # term's gradient scale independent of T (Hinton et al. 2015, sec. 2).
    return _KDLoss.apply(student_logits, teacher_probs.detach().to(student_logits.dtype), labels,
                         float(temperature), float(max(alpha, 0.0)), float(label_smoothing))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            *, temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton, Vinyals, Dean 2015).

    ``L = alpha * CE(z_s, t_y) + (1 - alpha) * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``
    with ``t_y = (1 - eps) * onehot(y) + eps / C`` (``eps = label_smoothing``, 0 = the plain one-hot)

    Parameters
    ----------
    student_logits, teacher_logits : ``(B, C)`` float tensors.
    labels : ``(B,)`` int64 class indices, or ``(B, C)`` target distributions (mixup or mixed views, core.mixup).
    temperature : T > 0; higher T gives softer targets.
    alpha : weight of the hard-label cross-entropy in [0, 1]; ``alpha=1`` is plain
        cross-entropy (the teacher is ignored), ``alpha=0`` pure distillation (labels ignored).

    Returns
    -------
    Scalar tensor: the batch mean.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same (B, C) shape")
    if alpha == 1.0:
        return F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    probs = soft_targets(teacher_logits.detach(), temperature)
    return kd_loss_from_probs(student_logits, probs, labels, temperature=temperature, alpha=alpha,
                              label_smoothing=label_smoothing)
