"""Accuracy and time of raydistill's KD against the plain PyTorch KD script a user would write, in one run,
on the same cores, data, teacher, student, loss, optimizer, batch and epochs (Fashion-MNIST, 60k/10k).

One teacher for every row and seed, trained by the plain script (Adam 1e-3, ``--teacher-epochs``
epochs, 3 by default, random flips and +-2 px shifts): ``--teacher cnn`` (conv 32-64, fc 128; the
default) or ``mlp`` (1200-1200: cheaper online, but hardly better than the student, so KD has little to
give). Per seed, four students (MLP 784-128-10, Adam 1e-3, batch 256, ``--epochs`` epochs, the same
flips and shifts):

  plain alone     the script without a teacher (cross-entropy)
  plain KD        the script with the teacher online every step:
                  ``L = a CE(z_s, y) + (1 - a) T^2 KL(softmax(z_t/T) || softmax(z_s/T))``, T=4, a=0.5
  online KD       ``raydistill.core.engine.fit`` with the teacher online (``distill.mode=online``)
  cached views    ``engine.fit`` on the teacher's logits cached once on 8 seeded views per example
                  (``distill.cached_views=8``; the cache build counts in its time)

With ``--mixup P`` every row mixes a fraction P of its inputs (lam ~ Beta(1, 1), labels mixed by lam):
the plain script does classic in-batch mixup (Zhang et al. 2018; plain KD runs the teacher on the mixed
batch, as a user adding mixup to that loop would), the cached-views row caches the teacher on mixed views
(``distill.augment.mixup``, core.mixup: partners from the whole training set), and ``online KD`` is
``engine.fit``'s in-batch mixup (core.mixup.mix_batch) with the teacher online on the mixed batch — the
plain KD loop's counterpart (``distill.mode=online`` with ``distill.augment.mixup``).

The plain rows import nothing from raydistill. T, a and the schedule are fixed before the run (the
settings the README's KD rows use); nothing is chosen on the test split. Prints each seed, then the table
(mean +- std, median, every seed, each row against plain KD: mean difference and seeds won/lost).

    .venv/bin/python benchmarks/kd_plain_script.py [--seeds 0 1 2 3 4 5] [--epochs 10] [--threads 2]
        [--teacher cnn|mlp] [--teacher-epochs 3] [--mixup 0.5]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raydistill.core.config import ConfigError, load_config
from raydistill.core.config.schema import AugmentSpec, RecipeSection
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, fit, teacher_view_cache
from raydistill.core.models import build_model
from raydistill.core.recipe import raw_zero_fill
from raydistill.core.views import ViewCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import FASHION  # noqa: E402
BATCH, T, ALPHA, LR, VIEWS = 256, 4.0, 0.5, 1e-3, 8
SPEC = AugmentSpec(hflip=True, translate=2)
ROWS = ("plain alone", "plain KD", "online KD", "cached views")


# ---- the plain script: torch only ------------------------------------------------------------------
def plain_mlp(hidden: list[int]) -> nn.Module:
    layers, width = [nn.Flatten()], 784
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, 10))


def plain_cnn() -> nn.Module:
    """conv 32-64 (3x3, ReLU, 2x2 max-pool each) -> fc 128 -> 10: the shape of the configs' CNN teacher."""
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def plain_augment(x: torch.Tensor, g: torch.Generator, fill: float) -> torch.Tensor:
    """A random +-2 px shift (border = ``fill``) and a horizontal flip per example, ``(B, 1, 28, 28)``."""
    pad = F.pad(x, (2, 2, 2, 2), value=fill)
    oy, ox = torch.randint(0, 5, (len(x),), generator=g), torch.randint(0, 5, (len(x),), generator=g)
    out = torch.stack([pad[i, :, oy[i]:oy[i] + 28, ox[i]:ox[i] + 28] for i in range(len(x))])
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def plain_mix(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Classic in-batch mixup of a fraction ``rate`` of the rows: ``lam x_i + (1 - lam) x_j`` with j a
    random row of the batch and lam ~ U(0, 1) = Beta(1, 1); the label distribution ``(B, 10)`` mixed alike."""
    j = torch.randperm(len(x), generator=g)
    lam = torch.where(torch.rand(len(x), generator=g) < rate, torch.rand(len(x), generator=g), torch.ones(len(x)))
    onehot = F.one_hot(y, 10).float()
    return (lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[j],
            lam[:, None] * onehot + (1 - lam[:, None]) * onehot[j])


def plain_train(model: nn.Module, x, y, *, epochs: int, seed: int, fill: float, teacher=None,
                mixup: float = 0.0) -> nn.Module:
    """The loop a user writes: CE alone, or online KD when ``teacher`` is given, on mixed batches with
    ``mixup`` > 0; ``seed`` seeds the batch order and the augmentation."""
    opt, g = torch.optim.Adam(model.parameters(), LR), torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for i in torch.randperm(len(y), generator=g).split(BATCH):
            xb = plain_augment(x[i], g, fill)
            if mixup:
                xb, target = plain_mix(xb, y[i], g, mixup)
            z = model(xb)
            loss = F.cross_entropy(z, target if mixup else y[i])
            if teacher is not None:
                with torch.no_grad():
                    p = F.softmax(teacher(xb) / T, 1)
                soft = F.kl_div(F.log_softmax(z / T, 1), p, reduction="batchmean")
                loss = ALPHA * loss + (1 - ALPHA) * T * T * soft
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x, y) -> float:
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


# ---- the rows ----------------------------------------------------------------------------------------
def run_seed(seed: int, data: dict, teacher: nn.Module, epochs: int, mixup: float = 0.0) -> dict:
    """Test accuracy and seconds of each row for one student seed (every row's inputs mixed with ``mixup``)."""
    x, y, fill = data["x"], data["y"], data["fill"]
    kd = KDSettings(temperature=T, alpha=ALPHA)
    spec = dataclasses.replace(SPEC, mixup=mixup)
    out = {}

    def timed(name, train):
        torch.manual_seed(seed)
        start = time.perf_counter()
        model = train()
        out[name], out[name + "_s"] = accuracy(model.eval(), data["xt"], data["yt"]), time.perf_counter() - start

    timed("plain alone", lambda: plain_train(plain_mlp([128]), x, y, epochs=epochs, seed=seed, fill=fill,
                                             mixup=mixup))
    timed("plain KD", lambda: plain_train(plain_mlp([128]), x, y, epochs=epochs, seed=seed, fill=fill,
                                          teacher=teacher, mixup=mixup))

    def online():
        student = build_model("mlp", (1, 28, 28), 10, {"hidden": [128]})
        fit(student, data["xn"], data["yn"], epochs=epochs, lr=LR, batch_size=BATCH, seed=seed, kd=kd,
            teachers=[teacher], recipe=RecipeSection(augment=spec), fill=(fill,), num_classes=10)
        return student

    def cached():
        views = ViewCache(views=VIEWS, spec=spec, fill=(fill,), seed=seed, num_classes=10, population=len(y))
        cache = teacher_view_cache(views, [teacher], x, torch.arange(len(y)), 10, pool=x)
        student = build_model("mlp", (1, 28, 28), 10, {"hidden": [128]})
        fit(student, data["xn"], data["yn"], epochs=epochs, lr=LR, batch_size=BATCH, seed=seed, kd=kd,
            views=views, view_cache=cache, num_classes=10)
        return student

    timed("online KD", online)
    timed("cached views", cached)
    return out


def table(results: list[dict], seeds: list[int]) -> str:
    """Markdown: each row's accuracy (mean +- std, median, per seed), against plain KD, and its time."""
    base = [r["plain KD"] for r in results]
    base_s = statistics.median(r["plain KD_s"] for r in results)
    lines = [f"| row | test accuracy, mean ± std | median | per seed ({' '.join(map(str, seeds))}) "
             "| vs plain KD, mean | seeds won/lost vs plain KD | time per run (median) | time vs plain KD |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for row in ROWS:
        acc = [r[row] for r in results]
        diff = [a - b for a, b in zip(acc, base)]
        sec = statistics.median(r[row + "_s"] for r in results)
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        versus = "" if row == "plain KD" else f"{100 * statistics.mean(diff):+.2f} pt"
        won = "" if row == "plain KD" else f"{sum(d > 0 for d in diff)}/{sum(d < 0 for d in diff)}"
        lines.append(f"| {row} | {statistics.mean(acc):.4f} ± {std:.4f} | {statistics.median(acc):.4f} | "
                     f"{' '.join(f'{a:.4f}' for a in acc)} | {versus} | {won} | {sec:.1f} s | {sec / base_s:.2f}x |")
    return "\n".join(lines)


def load(root: str) -> dict:
    """Fashion-MNIST normalized as raydistill does it: numpy for engine.fit, tensors for the script."""
    cfg = load_config("configs/fashion_mnist.yaml", [f"data.root={root}", "data.val_fraction=0.0", "run.quiet=true"])
    bundle = load_data(cfg.data, 0)
    fill = raw_zero_fill(bundle.normalization, 1)[0]
    return {"xn": bundle.x_train, "yn": bundle.y_train, "x": torch.as_tensor(bundle.x_train),
            "y": torch.as_tensor(bundle.y_train), "xt": torch.as_tensor(bundle.x_test),
            "yt": torch.as_tensor(bundle.y_test), "fill": fill}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every row (the cores used)")
    parser.add_argument("--teacher", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--fashion-root", default=str(FASHION))
    parser.add_argument("--mixup", type=float, default=0.0, help="fraction of every row's inputs mixed (0: none)")
    args = parser.parse_args()
    if not 0 <= args.mixup <= 1:
        raise ConfigError(f"--mixup must be in [0, 1], got {args.mixup}")
    for flag, value in (("--epochs", args.epochs), ("--threads", args.threads),
                        ("--teacher-epochs", args.teacher_epochs)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds must be distinct, got {args.seeds}")
    torch.set_num_threads(args.threads)
    data = load(args.fashion_root)
    torch.manual_seed(0)
    start = time.perf_counter()
    teacher = plain_cnn() if args.teacher == "cnn" else plain_mlp([1200, 1200])
    teacher = plain_train(teacher, data["x"], data["y"], epochs=args.teacher_epochs, seed=1000, fill=data["fill"])
    name = "conv 32-64 fc 128" if args.teacher == "cnn" else "MLP 1200-1200"
    name += f", {args.teacher_epochs} epochs"
    print(f"teacher ({name}): test {accuracy(teacher, data['xt'], data['yt']):.4f} "
          f"in {time.perf_counter() - start:.0f} s", flush=True)
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, data, teacher, args.epochs, args.mixup))
        torch.set_num_threads(args.threads)  # every row of the next seed on the same cores
        print(f"seed {seed}: " + json.dumps({k: round(v, 4) for k, v in results[-1].items()}), flush=True)
    print(f"\nfashion_mnist, teacher {name}, student MLP 128, {args.epochs} epochs, Adam {LR}, batch {BATCH}, "
          f"T={T}, alpha={ALPHA}, flips and +-2 px shifts"
          + (f", mixup {args.mixup:g} (lam ~ Beta(1, 1))" if args.mixup else "")
          + f"; seeds {args.seeds}; {args.threads} threads")
    print(table(results, args.seeds))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
