"""Compression methods and their measurements, plain PyTorch (no Ray): INT8 dynamic quantization,
global magnitude pruning with sparse storage, parameter counts, file sizes and CPU latency.

Stored formats (one ``.pt`` file per compressed model, read back with ``weights_only=True``):

- ``int8-dynamic``: the ``state_dict`` of ``quantize_dynamic(model, {nn.Linear}, qint8)``;
  rebuilt by quantizing a fresh model of the same architecture and loading it.
- ``sparse-csr``: every pruned weight as a CSR tensor with int32 indices (conv kernels
  ``(O, I, kh, kw)`` flattened to ``(O, I*kh*kw)``), other tensors dense. Bytes per weight:
  ``(1 - s) * (4 + 4)`` for values + column indices, plus ``4 * (rows + 1)`` row pointers, so
  CSR beats dense float32 (4 bytes) only above 50% sparsity ``s``.
"""
from __future__ import annotations

import copy
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Linear, nn.Conv2d)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` for every Linear/Conv2d: what global pruning ranks together."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_global_l1(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy of ``model`` with the ``sparsity`` fraction of smallest-|w| weights, ranked across
    all layers at once, masked to zero (``prune.global_unstructured``, L1). The mask stays
    attached (forward pre-hook) so fine-tuning keeps pruned weights at zero; call
    :func:`make_permanent` afterwards."""
    pruned = copy.deepcopy(model)
    prune.global_unstructured(prunable_weights(pruned), pruning_method=prune.L1Unstructured, amount=sparsity)
    return pruned


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold masks into the weights (``weight = weight_orig * mask``) and drop the hooks."""
    for module, name in prunable_weights(model):
        if prune.is_pruned(module):
            prune.remove(module, name)
    return model


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the prunable weights."""
    weights = [getattr(m, n).detach() for m, n in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def nonzero_parameters(model: nn.Module) -> int:
    return int(sum(int((p.detach() != 0).sum()) for p in model.parameters()))


def save_sparse(model: nn.Module, path: Path) -> Path:
    """Save a (permanently) pruned model's state dict with ≥2-D weights as int32 CSR."""
    sparse, dense = {}, {}
    for key, value in model.state_dict().items():
        if key.endswith("weight") and value.dim() >= 2:
            sparse[key] = {"csr": _csr_int32(value.detach().reshape(value.shape[0], -1)), "shape": list(value.shape)}
        else:
            dense[key] = value.detach().clone()
    torch.save({"format": "sparse-csr", "sparse": sparse, "dense": dense}, path)
    return path


def _csr_int32(matrix: torch.Tensor) -> torch.Tensor:
    """``(R, K)`` dense -> CSR with int32 row pointers and column indices (int64 is the default)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = matrix.to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(),
                                       size=csr.shape, check_invariants=True)


def load_sparse_state(path: Path) -> dict[str, torch.Tensor]:
    """The dense state dict of a file written by :func:`save_sparse`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR is beta", invariant checks
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = dict(blob["dense"])
        for key, entry in blob["sparse"].items():
            state[key] = entry["csr"].to_dense().reshape(entry["shape"])
    return state


def file_bytes(path: Path | str) -> int:
    return Path(path).stat().st_size


@torch.inference_mode()
def latency_ms(model: nn.Module, x: np.ndarray, *, batch: int, repeats: int, threads: int, warmup: int = 3) -> float:
    """Median wall time in ms of ``model(x[:batch])`` over ``repeats`` runs, ``threads`` torch
    threads (restored afterwards). ``x`` is tiled when it has fewer than ``batch`` rows."""
    rows = np.resize(x, (batch, *x.shape[1:])) if len(x) < batch else x[:batch]
    inputs = torch.as_tensor(np.ascontiguousarray(rows, np.float32))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model.eval()
        for _ in range(warmup):
            model(inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(inputs)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 1000.0 * statistics.median(times)
