"""How a recipe's T and alpha (and distillation mode) are chosen without the test split: the teacher
trains on the training split, then the student alone and with KD at each (T, alpha) on the same
split, scored on the held-out validation split (``data.val_fraction``). In-process, every core,
through the same engine the Ray Train workers run (core.engine.fit with each section's recipe).

    .venv/bin/python benchmarks/kd_val.py --config configs/fashion_mnist.yaml --set data.val_fraction=0.1 \
        --temperatures 4 20 --alphas 0.1 0.5 [--seeds 0]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from raydistill.core.config import load_config
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, evaluate, fit, predict_logits
from raydistill.core.models import build_model
from raydistill.core.recipe import raw_zero_fill


def val_scores(cfg, seed: int, grid) -> dict[str, float]:
    """Validation accuracy of the teacher, the student alone and the student at each (T, alpha)."""
    bundle = load_data(cfg.data, seed)
    if len(bundle.y_val) == 0:
        raise SystemExit("data.val_fraction is 0: there is no validation split to choose on")
    t, d = cfg.teacher, cfg.distill
    fill = raw_zero_fill(bundle.normalization, bundle.input_shape[0])
    torch.manual_seed(seed)
    teacher = build_model(t.model.name, bundle.input_shape, bundle.num_classes, t.model.args)
    fit(teacher, bundle.x_train, bundle.y_train, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, seed=seed,
        recipe=t, fill=fill)
    scores = {"teacher": evaluate(teacher, bundle.x_val, bundle.y_val)["accuracy"]}
    online = d.mode == "online"
    logits = None if online else predict_logits(teacher, bundle.x_train)
    for temperature, alpha in [(None, None), *grid]:
        torch.manual_seed(seed)
        student = build_model(d.student.name, bundle.input_shape, bundle.num_classes, d.student.args)
        kd = None if temperature is None else KDSettings(temperature=temperature, alpha=alpha)
        fit(student, bundle.x_train, bundle.y_train, epochs=d.epochs, lr=d.lr, batch_size=d.batch_size, seed=seed,
            recipe=d, fill=fill, kd=kd, teacher_logits=logits if kd else None,
            teachers=[teacher] if kd and online else ())
        key = "student alone" if kd is None else f"KD T={temperature:g} alpha={alpha:g}"
        scores[key] = evaluate(student, bundle.x_val, bundle.y_val)["accuracy"]
        print(f"seed {seed} {key:<22} val {scores[key]:.4f}", flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[4.0, 20.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    grid = [(t, a) for t in args.temperatures for a in args.alphas]
    start = time.time()
    runs = [val_scores(cfg, s, grid) for s in args.seeds]
    print(f"\n{cfg.data.name}: validation accuracy, seeds {args.seeds}, mode {cfg.distill.mode} "
          f"({time.time() - start:.0f} s)")
    for name in runs[0]:
        values = [r[name] for r in runs]
        diff = [r[name] - r["student alone"] for r in runs]
        print(f"{name:<24}{sum(values) / len(values):>8.4f}  vs alone {sum(diff) / len(diff):+.4f}  "
              + " ".join(f"{v:.4f}" for v in values))
    print(json.dumps({"benchmark": "kd_val", "config": args.config, "overrides": args.overrides, "runs": runs}))


if __name__ == "__main__":
    main()
