"""3-teacher ensemble student vs the best single-teacher student, mean ± std over repetitions.

In-process engine training (``engine.fit``, cached teacher logits), no Ray: the stage code
runs the same loss per batch (``engine.batch_loss``), and in-process keeps the benchmark to
about a minute on 2 cores. Each repetition r trains K teachers (seeds 100r + k, or one per
``teacher.models`` entry), then from the same student init (seed r): a student alone, one
student per single teacher, and one from the equal-weight ensemble of all K.

"Best single" is reported two ways: the teacher picked by its validation accuracy (what a user
would do), and the oracle pick by the student's test accuracy (the single teacher's best case).

    python benchmarks/ensemble_vs_single.py [--config configs/digits.yaml] [--reps 3] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from raydistill.core.config import ConfigError, load_config
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, evaluate, fit, predict_logits
from raydistill.core.models import build_model


def train(spec, bundle, *, seed, section, kd=None, logits=None):
    """A fresh model of ``spec`` (init from ``seed``) trained in-process with ``section``'s recipe
    (epochs, lr, batch size, optimizer, schedule); returns it in eval mode."""
    torch.manual_seed(seed)
    model = build_model(spec.name, bundle.input_shape, bundle.num_classes, spec.args)
    fit(model, bundle.x_train, bundle.y_train, epochs=section.epochs, lr=section.lr, batch_size=section.batch_size,
        seed=seed, recipe=section, kd=kd, teacher_logits=logits, num_classes=bundle.num_classes)
    return model.eval()


def accuracy(model, bundle, split="test") -> float:
    return evaluate(model, getattr(bundle, f"x_{split}"), getattr(bundle, f"y_{split}"))["accuracy"]


def repetition(cfg, bundle, rep: int, k: int) -> dict:
    """One repetition: K teachers, then the students; returns test accuracies by role."""
    t, d = cfg.teacher, cfg.distill
    specs = list(t.models) or [t.model] * k
    teachers = [train(s, bundle, seed=100 * rep + i, section=t) for i, s in enumerate(specs)]
    logits = [predict_logits(m, bundle.x_train) for m in teachers]  # (N, C) each, computed once
    student = dict(seed=rep, section=d)
    kd = KDSettings.for_distill(d)  # distill.method, T, alpha (and DKD's knobs) as the stage reads them
    singles = [accuracy(train(d.student, bundle, kd=kd, logits=z, **student), bundle) for z in logits]
    ensemble_kd = KDSettings.for_distill(d, teacher_weights=(1.0,) * len(logits))
    ensemble = train(d.student, bundle, kd=ensemble_kd, logits=np.stack(logits, axis=1), **student)  # (N, K, C)
    by_val = int(np.argmax([accuracy(m, bundle, "val") for m in teachers]))
    return {"teachers": [accuracy(m, bundle) for m in teachers],
            "teacher_ensemble": _ensemble_accuracy(teachers, bundle),
            "alone": accuracy(train(d.student, bundle, **student), bundle),
            "singles": singles, "single_by_val": singles[by_val], "single_oracle": max(singles),
            "ensemble": accuracy(ensemble, bundle)}


def _ensemble_accuracy(teachers, bundle) -> float:
    """Test accuracy of the teachers' averaged probabilities (T = 1): the ensemble itself."""
    probs = np.mean([torch.softmax(torch.as_tensor(predict_logits(m, bundle.x_test)), -1).numpy() for m in teachers], 0)
    return float((probs.argmax(1) == bundle.y_test).mean())


def _ms(values) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def table(results: list[dict], k: int) -> str:
    rows = [("teacher (each of K, all reps)", [a for r in results for a in r["teachers"]]),
            (f"ensemble of {k} teachers itself", [r["teacher_ensemble"] for r in results]),
            ("student alone (no teacher)", [r["alone"] for r in results]),
            ("student from one teacher (each of K)", [a for r in results for a in r["singles"]]),
            ("best single-teacher student (teacher picked by val acc)", [r["single_by_val"] for r in results]),
            ("best single-teacher student (oracle: best test acc)", [r["single_oracle"] for r in results]),
            (f"student from the {k}-teacher ensemble", [r["ensemble"] for r in results])]
    lines = ["| model | test accuracy (mean ± std) | n |", "|---|---|---|"]
    lines += [f"| {name} | {_ms(v)} | {len(v)} |" for name, v in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--teachers", type=int, default=3, help="K, when teacher.models is not set")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    if cfg.distill.augment.active():
        raise ConfigError("distill.augment: this benchmark caches each teacher's logits on the clean images; "
                          "augmented students would see targets of other inputs (use distill.mode=online in the stage)")
    bundle = load_data(cfg.data, cfg.run.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    results = [repetition(cfg, bundle, rep, args.teachers) for rep in range(args.reps)]
    k = len(results[0]["teachers"])
    print(f"{bundle.name}: train {len(bundle.y_train)}, test {len(bundle.y_test)}; teacher "
          f"{cfg.teacher.models or cfg.teacher.model} x{k}; student {cfg.distill.student}; "
          f"method={cfg.distill.method} T={cfg.distill.temperature} alpha={cfg.distill.alpha}; {args.reps} repetitions")
    print(table(results, k))
    summary = {key: statistics.mean(r[key] for r in results) for key in ("alone", "single_by_val", "single_oracle", "ensemble")}
    print(json.dumps({"benchmark": "ensemble_vs_single", "dataset": bundle.name, "k": k, "reps": args.reps,
                      "mean": summary, "seconds": round(time.perf_counter() - start, 1), "runs": results}))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
