"""Server-side aggregation as pure functions over ``(state_dict, num_examples)`` pairs. No Ray.

A *state* is a mapping ``name -> array`` (numpy arrays or torch tensors, as a model's
``state_dict()``). Functions here never mutate their inputs.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from raydistill.core.engine import KDSettings, evaluate, iterate_batches, make_optimizer, predict_logits, train_epoch

State = Mapping[str, "np.ndarray | torch.Tensor"]


def state_problem(state: State, like: State) -> str | None:
    """Why ``state`` cannot stand in for the global model ``like``, or None: exactly ``like``'s keys,
    each with the same shape and dtype, and only finite numbers (client updates, an aggregate,
    a checkpoint read back)."""
    keys, expected = set(state), set(like)
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        return f"keys differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, value in state.items():
        array, reference = np.asarray(value), np.asarray(like[key])
        if array.shape != reference.shape:
            return f"{key} has shape {list(array.shape)}, the global model has {list(reference.shape)}"
        if array.dtype != reference.dtype:
            return f"{key} has dtype {array.dtype}, the global model has {reference.dtype}"
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            return f"{key} holds NaN or infinite values"
    return None
Update = tuple[State, int]

__all__ = ["fedavg", "fedmedian", "fedtrimmedavg", "state_nbytes", "to_numpy_state", "to_torch_state", "proximal_term", "proximal_pull",
           "ensemble_logits", "distill_ensemble"]


def to_numpy_state(state: State) -> dict[str, np.ndarray]:
    """A CPU numpy copy of ``state`` (what travels through the object store)."""
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).copy()
            for k, v in state.items()}


def to_torch_state(state: State) -> dict[str, torch.Tensor]:
    """Writable torch tensors (object-store numpy arrays are read-only views)."""
    return {k: torch.tensor(np.array(v)) if not isinstance(v, torch.Tensor) else v.clone() for k, v in state.items()}


def state_nbytes(state: State) -> int:
    """Bytes of the arrays in ``state`` (what one transfer of the model costs)."""
    return int(sum(np.asarray(v).nbytes if not isinstance(v, torch.Tensor) else v.numel() * v.element_size()
                   for v in state.values()))


def fedavg(updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Federated averaging (McMahan et al. 2017, eq. for ``w_{t+1}``).

    ``w = sum_i (n_i / n) * w_i`` with ``n = sum_i n_i``, computed in float64 per entry and cast
    back to each entry's dtype (integer buffers such as BatchNorm's ``num_batches_tracked`` are
    rounded).

    Parameters
    ----------
    updates : ``[(state_i, n_i), ...]`` with identical keys and shapes, ``n_i >= 0``, ``n > 0``.

    Returns
    -------
    The averaged state as numpy arrays.
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = float(sum(n for _, n in updates))
    if total <= 0:
        raise ValueError("fedavg: the updates hold no examples (sum of n_i is 0)")
    keys = list(updates[0][0].keys())
    averaged: dict[str, np.ndarray] = {}
    for key in keys:
        first = np.asarray(updates[0][0][key])
        acc = np.zeros(first.shape, dtype=np.float64)
        for state, n in updates:
            acc += (n / total) * np.asarray(state[key], dtype=np.float64)
        averaged[key] = _cast_like(acc, first)
    return averaged


def _stacked(updates: Sequence[Update], key: str) -> np.ndarray:
    """``(K, *shape)`` float64: entry ``key`` of every update, stacked."""
    return np.stack([np.asarray(state[key], dtype=np.float64) for state, _ in updates])


def _cast_like(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return (np.rint(values) if np.issubdtype(like.dtype, np.integer) else values).astype(like.dtype)


def fedmedian(updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Coordinate-wise median of the clients' weights (Yin et al. 2018), unweighted: for every entry
    ``w[j] = median_i w_i[j]``. Robust to a minority of arbitrary updates."""
    if not updates:
        raise ValueError("fedmedian needs at least one update")
    first = updates[0][0]
    return {k: _cast_like(np.median(_stacked(updates, k), axis=0), np.asarray(first[k])) for k in first}


def fedtrimmedavg(updates: Sequence[Update], trim_fraction: float) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed mean (Yin et al. 2018): per entry, sort the K client values, drop the
    ``b = floor(trim_fraction * K)`` smallest and largest, average the ``K - 2b`` left (unweighted)."""
    if not updates:
        raise ValueError("fedtrimmedavg needs at least one update")
    k = len(updates)
    b = int(trim_fraction * k)
    first = updates[0][0]
    return {key: _cast_like(np.sort(_stacked(updates, key), axis=0)[b:k - b].mean(axis=0), np.asarray(first[key]))
            for key in first}


def proximal_term(params: Sequence[torch.Tensor], global_params: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's proximal term (Li et al. 2020, eq. 2): ``(mu / 2) * ||w - w_global||^2``.

    ``params`` and ``global_params`` are matching tensors; the result is a differentiable scalar
    whose gradient with respect to ``w`` is ``mu * (w - w_global)``.
    """
    total = sum(((w - g.detach()) ** 2).sum() for w, g in zip(params, global_params))
    return 0.5 * mu * total


@contextmanager
def proximal_pull(model: nn.Module, global_state: State, mu: float) -> Iterator[None]:
    """While active, every parameter gradient gets ``+ mu * (w - w_global)`` added.

    That is exactly the gradient of :func:`proximal_term`, so an unchanged training step
    (``engine.train_epoch``) minimizes ``loss + (mu / 2) ||w - w_global||^2``.
    """
    if mu == 0:
        yield
        return
    handles = []
    for name, param in model.named_parameters():
        anchor = torch.as_tensor(np.asarray(global_state[name]), dtype=param.dtype).clone()
        handles.append(param.register_hook(lambda grad, p=param, g=anchor: grad + mu * (p.detach() - g)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def ensemble_logits(model: nn.Module, states: Sequence[State], x: np.ndarray) -> np.ndarray:
    """Average logits ``(N, C)`` of the models ``states`` (one architecture ``model``) on ``x``.

    FedDF's ensemble teacher (Lin et al. 2020, Algorithm 1, "AvgLogits"): ``1/|S| sum_k f(w_k, x)``.
    """
    total = None
    for state in states:
        model.load_state_dict(to_torch_state(state))
        logits = predict_logits(model, x).astype(np.float64)
        total = logits if total is None else total + logits
    return (total / len(states)).astype(np.float32)


def distill_ensemble(model: nn.Module, teacher_logits: np.ndarray, proxy_x: np.ndarray, *, kd: KDSettings,
                     epochs: int, lr: float, batch_size: int, seed: int,
                     val: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Distill ``teacher_logits`` ``(N, C)`` on the unlabeled ``proxy_x`` into ``model`` (in place).

    Loss: ``kd``'s soft term alone (``alpha`` set to 0; Hinton's ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``
    for ``kd``), Adam; DKD's target class is the ensemble's own prediction ``argmax z_t`` (the proxy has no
    labels). With a non-empty ``val`` the model keeps the weights of the best validation accuracy seen,
    including before distillation (FedDF's early stopping on a validation set); without one it keeps
    the last epoch's.

    Returns
    -------
    ``{"losses": [...], "val_accuracy": [before, after epoch 1, ...], "kept_epoch": e}``.
    """
    kd = replace(kd, alpha=0.0, warmup_epochs=0)  # epochs here are not the run's: no warm-up
    val = val if val is not None and len(val[1]) else None  # data.val_fraction: 0 -> no early stopping
    predicted = np.asarray(teacher_logits).argmax(axis=1).astype(np.int64)  # alpha = 0: only DKD reads them
    optimizer = make_optimizer(model, lr)
    best = (evaluate(model, *val)["accuracy"], 0, _snapshot(model)) if val is not None else None
    history = {"losses": [], "val_accuracy": [best[0]] if best else [], "kept_epoch": 0}
    for epoch in range(epochs):
        batches = iterate_batches([proxy_x, predicted, teacher_logits], batch_size, shuffle=True,
                                  seed=seed + epoch)
        history["losses"].append(train_epoch(model, batches, optimizer, kd=kd))
        if val is not None:
            acc = evaluate(model, *val)["accuracy"]
            history["val_accuracy"].append(acc)
            if acc > best[0]:
                best = (acc, epoch + 1, _snapshot(model))
    if best is not None:
        model.load_state_dict(best[2])
        history["kept_epoch"] = best[1]
    return history


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
