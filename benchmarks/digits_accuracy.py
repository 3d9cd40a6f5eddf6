"""Accuracy of teacher, student alone and distilled student over seeds, through the real Ray
Train stages (the `make demo` path). Prints a mean ± std table and one JSON line.

    .venv/bin/python benchmarks/digits_accuracy.py --config configs/digits.yaml --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

from raydistill.core.artifacts import load_card
from raydistill.core.config import load_config
from raydistill.runtime import init_ray
from raydistill.training.driver import distill_student, train_teacher


def run_seed(cfg, seed: int) -> dict[str, float]:
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))
    teacher = train_teacher(cfg)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher=str(teacher)))
    student = distill_student(cfg)
    alone = distill_student(cfg, baseline=True)
    return {name: load_card(p)["metrics"]["test_accuracy"]
            for name, p in (("teacher", teacher), ("student-alone", alone), ("distilled-student", student))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="rd-acc-")
    cfg = load_config(args.config, [*args.overrides, f"run.storage_path={storage}", "run.quiet=true"])
    init_ray(cfg.run.address)
    start = time.time()
    per_seed = [run_seed(cfg, s) for s in args.seeds]
    print(f"\n{cfg.data.name}: test accuracy over seeds {args.seeds} ({time.time() - start:.0f} s)")
    print(f"{'model':<20}{'mean':>8}{'std':>8}  per seed")
    summary = {}
    for name in per_seed[0]:
        values = [r[name] for r in per_seed]
        summary[name] = {"mean": statistics.mean(values), "std": statistics.pstdev(values), "runs": values}
        print(f"{name:<20}{summary[name]['mean']:>8.4f}{summary[name]['std']:>8.4f}  "
              + " ".join(f"{v:.4f}" for v in values))
    print(json.dumps({"benchmark": "digits_accuracy", "seeds": args.seeds, "results": summary}))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
