"""Splitting a labelled training set among emulated clients. No Ray, no torch: numpy only.

A partition is a list of 1-D int64 index arrays, one per client, into the label array it was
drawn from. Every partitioner here returns partitions that are **disjoint** and **cover** the
data (each index appears exactly once) and that are **reproducible** (same labels, client
count and seed -> the same arrays).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["PartitionError", "iid_partition", "dirichlet_partition", "make_partition", "label_histogram",
           "label_skew", "partition_summary"]


class PartitionError(ValueError):
    """The requested partition cannot be drawn (too many clients, min size unreachable)."""


def _check_sizes(n: int, num_clients: int, min_size: int) -> None:
    if num_clients < 1:
        raise PartitionError(f"need at least one client, got {num_clients}")
    if num_clients * min_size > n:
        raise PartitionError(f"{num_clients} clients x min_partition_size {min_size} = "
                             f"{num_clients * min_size} examples needed, but only {n} are available")


def iid_partition(num_examples: int, num_clients: int, *, seed: int, min_size: int = 1) -> list[np.ndarray]:
    """A seeded permutation of ``range(num_examples)`` cut into ``num_clients`` near-equal parts.

    Sizes differ by at most one: ``floor(N / C)`` or ``ceil(N / C)``.
    """
    _check_sizes(num_examples, num_clients, min_size)
    perm = np.random.default_rng(seed).permutation(num_examples).astype(np.int64)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def _class_proportions(rng: np.random.Generator, alpha: float, sizes: np.ndarray, average: float,
                       self_balancing: bool) -> np.ndarray:
    """``p ~ Dir(alpha * 1_C)`` over clients; with self-balancing, clients already above the
    average size get no share of this class (Flower's DirichletPartitioner default)."""
    p = rng.dirichlet(np.full(len(sizes), alpha))
    if self_balancing:
        p = np.where(sizes > average, 0.0, p)
        p = p / p.sum()  # at least one client is below average while examples remain
    return p


def _dirichlet_draw(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
                    self_balancing: bool) -> list[list[np.ndarray]]:
    """One draw: for each class k, split its indices at ``floor(cumsum(p_k) * n_k)``."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=np.int64)
    average = len(labels) / num_clients
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        p = _class_proportions(rng, alpha, sizes, average, self_balancing)
        cuts = (np.cumsum(p) * len(members)).astype(np.int64)[:-1]
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].append(chunk)
            sizes[client] += len(chunk)
    return parts


def dirichlet_partition(labels: np.ndarray, num_clients: int, *, alpha: float, seed: int, min_size: int = 1,
                        self_balancing: bool = True, max_tries: int = 10) -> list[np.ndarray]:
    """Label-skewed partition (Hsu, Qi & Brown 2019, "Measuring the effects of non-identical data
    distribution"; the convention of Flower's ``DirichletPartitioner``).

    For every class k a vector ``p_k ~ Dir(alpha, ..., alpha)`` over the C clients is drawn and
    class k's examples are cut in those proportions. Small ``alpha`` (0.1) gives each client few
    classes; large ``alpha`` (100) approaches IID. The whole draw is repeated until every client
    holds at least ``min_size`` examples.

    Parameters
    ----------
    labels : ``(N,)`` int class labels.
    num_clients : C >= 1.
    alpha : Dirichlet concentration, > 0.
    seed : seeds the draw and the in-client shuffle.
    min_size : minimum examples per client.
    self_balancing : give no more of a class to clients already above ``N / C`` examples.
    max_tries : draws before giving up.

    Raises
    ------
    PartitionError
        ``C * min_size > N``, ``alpha <= 0``, or no draw met ``min_size`` within ``max_tries``.
    """
    labels = np.asarray(labels)
    _check_sizes(len(labels), num_clients, min_size)
    if not alpha > 0:
        raise PartitionError(f"Dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    smallest = 0
    for _ in range(max_tries):
        parts = [np.concatenate(chunks).astype(np.int64)
                 for chunks in _dirichlet_draw(labels, num_clients, alpha, rng, self_balancing)]
        smallest = min(len(p) for p in parts)
        if smallest >= min_size:
            for p in parts:
                rng.shuffle(p)  # no [0000 1111 ...] runs inside a client
            return parts
    raise PartitionError(f"no Dirichlet(alpha={alpha}) draw over {num_clients} clients gave every client >= "
                         f"{min_size} examples in {max_tries} tries (smallest client: {smallest}); raise alpha, "
                         f"lower min_partition_size, or use fewer clients")


def make_partition(labels: np.ndarray, num_clients: int, *, kind: str, alpha: float, seed: int,
                   min_size: int = 1) -> list[np.ndarray]:
    """``kind`` = ``"iid"`` or ``"dirichlet"`` (the ``federated.partition`` config key)."""
    if kind == "iid":
        return iid_partition(len(labels), num_clients, seed=seed, min_size=min_size)
    if kind == "dirichlet":
        return dirichlet_partition(labels, num_clients, alpha=alpha, seed=seed, min_size=min_size)
    raise PartitionError(f"unknown partition '{kind}'; known: dirichlet, iid")


def label_histogram(parts: Sequence[np.ndarray], labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C_clients, K)`` int64 counts: row i is client i's examples per class."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts]).astype(np.int64)


def label_skew(hist: np.ndarray) -> float:
    """Mean total-variation distance between each client's label distribution and the global one.

    ``skew = mean_i 0.5 * sum_k | h_ik / n_i - H_k / N |``: 0 for identical distributions, close
    to 1 when every client holds a single class of many.
    """
    hist = np.asarray(hist, dtype=np.float64)
    global_p = hist.sum(axis=0) / hist.sum()
    client_p = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    return float(0.5 * np.abs(client_p - global_p).sum(axis=1).mean())


def partition_summary(parts: Sequence[np.ndarray], labels: np.ndarray, class_names: Sequence[str], *,
                      max_rows: int = 10) -> str:
    """A printable summary: sizes, classes per client, skew, and the first ``max_rows`` histogram rows."""
    hist = label_histogram(parts, labels, len(class_names))
    sizes = hist.sum(axis=1)
    present = (hist > 0).sum(axis=1)
    lines = [f"{len(parts)} clients, {int(sizes.sum())} examples; size min/median/max "
             f"{sizes.min()}/{int(np.median(sizes))}/{sizes.max()}; classes per client "
             f"mean {present.mean():.1f}; label skew (mean TV distance) {label_skew(hist):.3f}"]
    width = max(5, max(len(str(c)) for c in class_names[:12]) if len(class_names) <= 12 else 5)
    header = "client " + "".join(f"{str(c)[:width]:>{width + 1}}" for c in class_names) + "   total"
    lines.append(header)
    for i in range(min(max_rows, len(parts))):
        lines.append(f"{i:>6} " + "".join(f"{v:>{width + 1}}" for v in hist[i]) + f"{sizes[i]:>8}")
    if len(parts) > max_rows:
        lines.append(f"... {len(parts) - max_rows} more clients")
    return "\n".join(lines)
