"""The plain PyTorch grid search a user would write instead of `raydistill tune`: one teacher, its
logits computed once, then every (method, T, alpha) point trained for the full budget, the best on
validation scored on the test set. One process per worker (``--procs``), every core used; imports
nothing from raydistill. benchmarks/tune_asha.py --plain times it against the platform's sweeps.

    python benchmarks/plain_tune.py --root ../shared/datasets/fashion-mnist --temperatures 1 3 --alphas 0.1 0.7
"""
import argparse, itertools, json, os, time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from plain_torch import mlp, read_idx, train  # the stage baseline's IDX reader, MLP and loop (its own folder)


def load(root, val_fraction, seed):  # train / val / test, normalized by the training split's mean and std
    r = Path(root)
    x, y = read_idx(r / "train-images-idx3-ubyte.gz").astype(np.float32), read_idx(r / "train-labels-idx1-ubyte.gz")
    xte, yte = read_idx(r / "t10k-images-idx3-ubyte.gz").astype(np.float32), read_idx(r / "t10k-labels-idx1-ubyte.gz")
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:int(len(x) * val_fraction)], order[int(len(x) * val_fraction):]
    mean, std = x[train].mean(), x[train].std()
    t = lambda a, b: (torch.from_numpy((a - mean) / std).view(len(a), -1), torch.from_numpy(b.astype(np.int64)))  # noqa: E731
    return t(x[train], y[train]), t(x[val], y[val]), t(xte, yte)


def z(logits):  # logit standardization (Sun et al. 2024)
    return (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + 1e-7)


def soft(method, s, t, y, T):  # kd: T^2 KL(p_t || q); dkd: T^2 (TCKD + 8 NCKD), Zhao et al. 2022
    s, t = (z(s), z(t)) if method.endswith("lskd") else (s, t)
    if method.startswith("dist"):  # Huang et al. 2022: T^2 (2 - Pearson per example - Pearson per class)
        p_s, p_t = F.softmax(s / T, -1), F.softmax(t / T, -1)
        c = lambda v: v - v.mean(-1, keepdim=True)  # noqa: E731
        rho = lambda a, b: F.cosine_similarity(c(a), c(b), -1).mean()  # noqa: E731
        return (2 - rho(p_s, p_t) - rho(p_s.T, p_t.T)) * T * T
    if not method.startswith("dkd"):
        return F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
    gt = F.one_hot(y, s.shape[-1]).bool()
    p_t, log_q = F.softmax(t / T, -1), F.log_softmax(s / T, -1)
    b_t = torch.stack([p_t[gt], 1 - p_t[gt]], -1).clamp_min(1e-12)
    b_s = torch.stack([log_q[gt], torch.logsumexp(log_q.masked_fill(gt, -1e9), -1)], -1)
    tckd = (b_t * (b_t.log() - b_s)).sum(-1)
    nckd = F.kl_div(F.log_softmax(s / T - 1e9 * gt, -1), F.softmax(t / T - 1e9 * gt, -1), reduction="none").sum(-1)
    return (tckd + 8.0 * nckd).mean() * T * T


def train_point(model, data, a, logits, point):  # -> val accuracy after the last epoch (Tune's score)
    (x, y), (xv, yv) = data
    method, T, alpha = point
    mix = lambda s, t, yb, T, alpha: alpha * F.cross_entropy(s, yb) + (1 - alpha) * soft(method, s, t, yb, T)  # noqa: E731
    vals = []  # every epoch, as a Tune trial reports it
    train(model, x, y, argparse.Namespace(**vars(a), T=T, alpha=alpha), logits, mix,
          after_epoch=lambda m: vals.append(accuracy(m, xv, yv)))
    return vals[-1]


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    return float((torch.cat([model(x[i:i + 4096]) for i in range(0, len(x), 4096)]).argmax(-1) == y).float().mean())


SHARED = {}  # per worker process: the data, the teacher's logits and the arguments, sent once


def share(data, logits, a):
    SHARED.update(data=data, logits=logits, a=a)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // a.procs))


def trial(point):  # one grid point, in a worker process with its share of the cores
    data, logits, a = SHARED["data"], SHARED["logits"], SHARED["a"]
    torch.manual_seed(a.seed)
    model = mlp(a.hidden, 0.0)
    return point, train_point(model, data, a, logits, point), model.state_dict()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--methods", nargs="+", default=["lskd"])
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 3.0, 8.0, 20.0])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.4, 0.7, 0.9])
    p.add_argument("--procs", type=int, default=1, help="grid points trained at once, cores shared evenly")
    p.add_argument("--hidden", type=int, nargs="+", default=[32])
    p.add_argument("--teacher-hidden", type=int, nargs="+", default=[1200, 1200])
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--teacher-file", default="", help="reuse the teacher saved here (trained and saved if absent)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    start = time.perf_counter()
    torch.manual_seed(a.seed)
    train_set, val_set, (xte, yte) = load(a.root, 0.1, a.seed)
    load_s = time.perf_counter() - start
    teacher = mlp(a.teacher_hidden, 0.5)  # the sweep's input, not timed: the platform's sweeps reuse one teacher too
    if a.teacher_file and Path(a.teacher_file).is_file():  # trained by an earlier run of the same benchmark
        teacher.load_state_dict(torch.load(a.teacher_file, weights_only=True))
    else:
        train(teacher, *train_set, argparse.Namespace(**{**vars(a), "epochs": a.teacher_epochs, "lr": 1e-3, "batch": 64}))
        if a.teacher_file:
            torch.save(teacher.state_dict(), a.teacher_file)
    start = time.perf_counter()
    with torch.no_grad():
        teacher.eval()
        logits = teacher(train_set[0])  # cached once
    grid = list(itertools.product(a.methods, a.temperatures, a.alphas))
    shared = ((train_set, val_set), logits, a)
    if a.procs == 1:
        share(*shared)
        results = [trial(point) for point in grid]
    else:
        with mp.get_context("spawn").Pool(a.procs, initializer=share, initargs=shared) as pool:
            results = pool.map(trial, grid, chunksize=1)
    point, val, state = max(results, key=lambda r: r[1])
    best = mlp(a.hidden, 0.0)
    best.load_state_dict(state)
    print(json.dumps({"benchmark": "plain_tune", "procs": a.procs, "trials": len(grid), "epochs": a.epochs,
                      "best": list(point), "best_val_accuracy": val, "test_accuracy": accuracy(best, xte, yte),
                      "sweep_s": load_s + time.perf_counter() - start, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
