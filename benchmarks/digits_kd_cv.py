"""How the default T and alpha were chosen without touching the test split: k-fold
cross-validation on train+val, paired per fold (same split, same initialization).

For each seed (which fixes the test split, as in the stages) the train+val pool is cut into
``--folds`` folds; per fold the teacher from the config is trained on the rest, its logits are
cached once, and the student is trained alone and with KD at every (T, alpha) of the grid. The
global batch is ``distill.batch_size * distill.workers`` (what DDP's averaged gradient sees).
Prints per setting: mean held-out accuracy, mean paired difference to the student alone, and
in how many folds KD won / lost. In-process, plain PyTorch (the same engine the workers run).

    .venv/bin/python benchmarks/digits_kd_cv.py --seeds 0 1 2 3 [--set distill.student.args={hidden: [64]}]
    .venv/bin/python benchmarks/digits_kd_cv.py --seeds 0 1 2 --temperatures 1 --alphas 0.5 --methods kd lskd
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import torch

from raydistill.core.config import ConfigError, load_config
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, evaluate, fit, predict_logits
from raydistill.core.models import build_model
from raydistill.core.recipe import raw_zero_fill


def fold_scores(cfg, x, y, train_idx, held_idx, seed, grid, norm) -> dict[str, float]:
    """Held-out accuracy of the teacher, the student alone and the student at each (method, T, alpha)
    of ``grid``, each trained with its config section's recipe (optimizer, schedule, augmentation)."""
    t_cfg, d_cfg = cfg.teacher, cfg.distill
    workers = 1 if d_cfg.workers == "auto" else d_cfg.workers
    torch.manual_seed(seed)
    teacher = build_model(t_cfg.model.name, x.shape[1:], int(y.max()) + 1, t_cfg.model.args)
    fill = raw_zero_fill(norm, x.shape[1])
    fit(teacher, x[train_idx], y[train_idx], epochs=t_cfg.epochs, lr=t_cfg.lr, batch_size=t_cfg.batch_size, seed=seed,
        recipe=t_cfg, fill=fill, num_classes=int(y.max()) + 1)
    online = d_cfg.mode == "online"  # the teacher labels each augmented view; else logits on clean inputs, once
    logits = None if online else predict_logits(teacher, x[train_idx])
    scores = {"teacher": evaluate(teacher, x[held_idx], y[held_idx])["accuracy"]}
    for method, temperature, alpha in [(None, None, None), *grid]:
        torch.manual_seed(seed)
        student = build_model(d_cfg.student.name, x.shape[1:], int(y.max()) + 1, d_cfg.student.args)
        kd = None if temperature is None else KDSettings.for_distill(
            dataclasses.replace(d_cfg, method=method), temperature=temperature, alpha=alpha)
        fit(student, x[train_idx], y[train_idx], epochs=d_cfg.epochs, lr=d_cfg.lr,
            batch_size=d_cfg.batch_size * workers, seed=seed, kd=kd, recipe=d_cfg, fill=fill,
            teacher_logits=None if kd is None else logits, teachers=[teacher] if kd is not None and online else (),
            num_classes=int(y.max()) + 1)
        key = "student alone" if kd is None else f"{method} T={temperature:g} alpha={alpha:g}"
        scores[key] = evaluate(student, x[held_idx], y[held_idx])["accuracy"]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--methods", nargs="+", default=None, help="distill.method values (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.folds < 2:
        raise ConfigError(f"--folds must be >= 2 (each fold's teacher trains on the others), got {args.folds}")
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    grid = [(m, t, a) for m in (args.methods or [cfg.distill.method]) for t in args.temperatures for a in args.alphas]
    per_fold: dict[str, list[float]] = {}
    for seed in args.seeds:
        bundle = load_data(cfg.data, seed)  # the seed's test split is never read below
        x = np.concatenate([bundle.x_train, bundle.x_val])
        y = np.concatenate([bundle.y_train, bundle.y_val])
        order = np.random.default_rng(seed).permutation(len(y))
        for k, held in enumerate(np.array_split(order, args.folds)):
            scores = fold_scores(cfg, x, y, np.setdiff1d(order, held), held, seed * 100 + k, grid,
                                 bundle.normalization)
            for name, acc in scores.items():
                per_fold.setdefault(name, []).append(acc)
            print(f"seed {seed} fold {k}: teacher {scores['teacher']:.4f} alone {scores['student alone']:.4f}",
                  flush=True)
    alone = np.asarray(per_fold["student alone"])
    print(f"\n{cfg.data.name}, student {cfg.distill.student.name} {cfg.distill.student.args}: "
          f"{args.folds}-fold CV on train+val, seeds {args.seeds} ({len(alone)} folds)")
    print(f"{'setting':<30}{'mean acc':>10}{'vs alone':>10}{'wins':>6}{'losses':>8}")
    for name, accs in per_fold.items():
        a = np.asarray(accs)
        print(f"{name:<30}{a.mean():>10.4f}{(a - alone).mean():>+10.4f}{int((a > alone).sum()):>6}"
              f"{int((a < alone).sum()):>8}")
    print(json.dumps({"benchmark": "digits_kd_cv", "seeds": args.seeds, "folds": args.folds, "per_fold": per_fold}))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
