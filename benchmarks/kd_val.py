"""How a recipe's T and alpha (and distillation mode) are chosen without the test split: the teacher
trains on the training split, then the student alone and with KD at each (T, alpha) on the same
split, scored on the held-out validation split (``data.val_fraction``). In-process, every core,
through the same engine the Ray Train workers run (core.engine.fit with each section's recipe).

    .venv/bin/python benchmarks/kd_val.py --config configs/fashion_mnist.yaml --set data.val_fraction=0.1 \
        --temperatures 4 20 --alphas 0.1 0.5 [--seeds 0] [--student-epochs 8 20]

``--student-epochs`` compares schedule lengths (each with its own student-alone row); every row also
reports the model's accuracy on training examples, which says whether the student underfits.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from raydistill.core.config import load_config
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, evaluate, fit, predict_logits
from raydistill.core.models import build_model
from raydistill.core.recipe import raw_zero_fill


TRAIN_PROBE = 10_000  # training accuracy is measured on the first this-many training examples


def val_scores(cfg, seed: int, grid, student_epochs: list[int], alone_augmented: bool = False) -> dict[str, float]:
    """Validation accuracy of the teacher, and for each student schedule length E (epochs) of the
    student alone and at each (T, alpha); ``<key> train`` holds the same model's accuracy on the
    first ``TRAIN_PROBE`` training examples (train ~ val: the student underfits, and soft targets
    have no generalization gap to close). With ``alone_augmented``, also the student alone with the
    teacher's augmentation (``teacher.augment``): KD must beat the better of the two alone recipes."""
    bundle = load_data(cfg.data, seed)
    if len(bundle.y_val) == 0:
        raise SystemExit("data.val_fraction is 0: there is no validation split to choose on")
    t, d = cfg.teacher, cfg.distill
    fill = raw_zero_fill(bundle.normalization, bundle.input_shape[0])
    torch.manual_seed(seed)
    teacher = build_model(t.model.name, bundle.input_shape, bundle.num_classes, t.model.args)
    fit(teacher, bundle.x_train, bundle.y_train, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, seed=seed,
        recipe=t, fill=fill, num_classes=bundle.num_classes)
    scores = {"teacher": evaluate(teacher, bundle.x_val, bundle.y_val)["accuracy"]}
    online = d.mode == "online"
    logits = None if online else predict_logits(teacher, bundle.x_train)
    rows = [("student alone", None, None, d), *((f"KD T={t_:g} alpha={a:g}", t_, a, d) for t_, a in grid)]
    if alone_augmented:
        rows.append(("student alone, augmented", None, None, dataclasses.replace(d, augment=t.augment)))
    for epochs in student_epochs:
        for name, temperature, alpha, recipe in rows:
            torch.manual_seed(seed)
            student = build_model(d.student.name, bundle.input_shape, bundle.num_classes, d.student.args)
            kd = None if temperature is None else KDSettings.for_distill(d, temperature=temperature, alpha=alpha)
            fit(student, bundle.x_train, bundle.y_train, epochs=epochs, lr=d.lr, batch_size=d.batch_size, seed=seed,
                recipe=recipe, fill=fill, kd=kd, teacher_logits=logits if kd else None,
                teachers=[teacher] if kd and online else (), num_classes=bundle.num_classes)
            key = name if len(student_epochs) == 1 else f"{epochs} ep {name}"
            scores[key] = evaluate(student, bundle.x_val, bundle.y_val)["accuracy"]
            scores[f"{key} train"] = evaluate(student, bundle.x_train[:TRAIN_PROBE], bundle.y_train[:TRAIN_PROBE])["accuracy"]
            print(f"seed {seed} {key:<28} val {scores[key]:.4f} train {scores[f'{key} train']:.4f}", flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[4.0, 20.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--student-epochs", type=int, nargs="+", default=None,
                        help="student schedule lengths to compare (default: distill.epochs)")
    parser.add_argument("--alone-augmented", action="store_true",
                        help="also train the student alone with the teacher's augmentation (teacher.augment)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    grid = [(t, a) for t in args.temperatures for a in args.alphas]
    epochs = args.student_epochs or [cfg.distill.epochs]
    start = time.time()
    runs = [val_scores(cfg, s, grid, epochs, args.alone_augmented) for s in args.seeds]
    print(f"\n{cfg.data.name}: validation accuracy, seeds {args.seeds}, mode {cfg.distill.mode} "
          f"({time.time() - start:.0f} s)")
    for name in (n for n in runs[0] if not n.endswith(" train")):
        values = [r[name] for r in runs]
        alone = name.split(" ep ")[0] + " ep student alone" if " ep " in name else "student alone"
        diff = [r[name] - r[alone] for r in runs] if name != "teacher" else [0.0 for _ in runs]
        train = [r[f"{name} train"] for r in runs] if name != "teacher" else []
        print(f"{name:<30}{sum(values) / len(values):>8.4f}  vs alone {sum(diff) / len(diff):+.4f}  "
              + " ".join(f"{v:.4f}" for v in values)
              + (f"  train {sum(train) / len(train):.4f}" if train else ""))
    print(json.dumps({"benchmark": "kd_val", "config": args.config, "overrides": args.overrides, "runs": runs}))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
