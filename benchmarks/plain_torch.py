"""The plain PyTorch script a user would write instead of the platform: one process, every core,
MLP teacher / student alone / distilled student on IDX (MNIST-format) files. The baseline that
benchmarks/stage_walltime.py times the `raydistill` stages against; it imports nothing from raydistill.

    python benchmarks/plain_torch.py --stage teacher --root ../shared/datasets/fashion-mnist --out /tmp/p
    python benchmarks/plain_torch.py --stage baseline|distill --root ... --out /tmp/p   # distill reads the teacher
"""
import argparse, gzip, json, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_idx(path):
    data = gzip.open(path, "rb").read()
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(dims)


def load(root):
    r = Path(root)
    xtr, ytr = read_idx(r / "train-images-idx3-ubyte.gz"), read_idx(r / "train-labels-idx1-ubyte.gz")
    xte, yte = read_idx(r / "t10k-images-idx3-ubyte.gz"), read_idx(r / "t10k-labels-idx1-ubyte.gz")
    xtr, xte = xtr.astype(np.float32), xte.astype(np.float32)
    mean, std = xtr.mean(), xtr.std()  # one channel: per-channel = global
    norm = lambda x: torch.from_numpy((x - mean) / std).view(len(x), -1)  # noqa: E731
    return norm(xtr), torch.from_numpy(ytr.astype(np.int64)), norm(xte), torch.from_numpy(yte.astype(np.int64))


def mlp(hidden, dropout):
    layers, width = [], 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def kd(s, t, y, T, alpha):  # alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))
    soft = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
    return alpha * F.cross_entropy(s, y) + (1 - alpha) * soft


def train(model, x, y, a, logits=None, mix=kd, after_epoch=None):  # mix(s, t, y, T, alpha): the KD loss
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(a.seed * 1000 + epoch))
        for i in range(0, len(x), a.batch):
            idx = order[i:i + a.batch]
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx]) if logits is None else mix(out, logits[idx], y[idx], a.T, a.alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if after_epoch:
            after_epoch(model)


@torch.no_grad()
def predict(model, x):
    model.eval()
    return torch.cat([model(x[i:i + 4096]) for i in range(0, len(x), 4096)])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stage", choices=["teacher", "baseline", "distill"], required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--T", type=float, default=20.0)
    p.add_argument("--alpha", type=float, default=0.1)
    a = p.parse_args()
    start = time.perf_counter()
    torch.manual_seed(a.seed)
    x, y, xte, yte = load(a.root)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.stage == "teacher":
        model = mlp([1200, 1200], 0.5)
        train(model, x, y, a)
        torch.save(model.state_dict(), out / "teacher.pt")
    else:
        logits = None
        if a.stage == "distill":
            teacher = mlp([1200, 1200], 0.5)
            teacher.load_state_dict(torch.load(out / "teacher.pt", weights_only=True))
            logits = predict(teacher, x)  # cached once, like raydistill's default
        model = mlp([800, 800], 0.0)
        train(model, x, y, a, logits)
    errors = int((predict(model, xte).argmax(-1) != yte).sum())
    print(json.dumps({"stage": a.stage, "test_errors": errors, "test_accuracy": 1 - errors / len(yte),
                      "threads": torch.get_num_threads(), "seconds_in_process": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
