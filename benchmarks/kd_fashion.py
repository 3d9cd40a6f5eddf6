"""Does distillation pay on Fashion-MNIST? Teacher, student alone and distilled student with
configs/fashion_mnist.yaml (the same recipe for the student alone and the distilled student), over
seeds, through the real Ray Train stages; mean ± std, every seed, and seeds won/lost by KD.

``--engine-from`` adds the rows of the old engine (Hinton's MLP pair, Adam at a constant lr, no
augmentation, T=20 alpha=0.1) from ``stage_walltime.py`` logs of the same seeds and data, so the
table shows what the recipe buys.

    .venv/bin/python benchmarks/kd_fashion.py [--seeds 0 1 2] \
        [--engine-from benchmarks/results/stage_walltime_seeds012.txt]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

from raydistill.core.artifacts import load_card
from raydistill.core.config import load_config
from raydistill.runtime import init_ray
from raydistill.training.driver import distill_student, train_teacher

from _paths import FASHION, REPO

ROWS = ("teacher", "student alone", "distilled student")


def run_seed(cfg, seed: int) -> dict[str, float]:
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))
    started = time.perf_counter()
    teacher = train_teacher(cfg)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher=str(teacher)))
    alone = distill_student(cfg, baseline=True)
    student = distill_student(cfg)
    accs = {name: load_card(p)["metrics"]["test_accuracy"]
            for name, p in zip(ROWS, (teacher, alone, student))}
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in accs.items())
          + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    return accs


def engine_rows(paths: list[str]) -> dict[str, dict[int, float]]:
    """The old engine, per seed, from the last JSON line of each stage_walltime.py log (its raydistill
    columns: MLP teacher, Adam at a constant lr, no augmentation, T=20 alpha=0.1)."""
    names = {"teacher": "teacher", "baseline": "student alone", "distill": "distilled student"}
    rows: dict[str, dict[int, float]] = {f"{n} (old engine, MLP teacher)": {} for n in names.values()}
    for path in paths:
        line = [l for l in Path(path).read_text().splitlines() if l.startswith("{")][-1]
        for seed, r in json.loads(line)["results"].items():
            for stage, name in names.items():
                rows[f"{name} (old engine, MLP teacher)"][int(seed)] = r[stage]["raydistill_acc"]
    return rows


def table(per_seed: dict[str, dict[int, float]], seeds: list[int]) -> None:
    alone = per_seed.get("student alone")
    print(f"{'model':<38}{'mean':>8}{'± std':>8}  {'per seed':<26}vs alone (won/lost)")
    for name, values in per_seed.items():
        vals = [values[s] for s in seeds if s in values]
        if not vals:
            continue
        won = ""
        if name == "distilled student" and alone:
            diffs = [values[s] - alone[s] for s in seeds]
            won = (f"{100 * statistics.mean(diffs):+.2f} pt ({sum(d > 0 for d in diffs)}/"
                   f"{sum(d < 0 for d in diffs)})")
        print(f"{name:<38}{statistics.mean(vals):>8.4f}{statistics.pstdev(vals):>8.4f}  "
              f"{' '.join(f'{v:.4f}' for v in vals):<26}{won}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(REPO / "configs" / "fashion_mnist.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--engine-from", nargs="*", default=[], help="stage_walltime.py logs (same seeds)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="rd-kd-fashion-")
    cfg = load_config(args.config, [f"data.root={FASHION}",
                                    *args.overrides, f"run.storage_path={storage}", "run.quiet=true"])
    init_ray(cfg.run.address, dashboard=False)
    runs = {s: run_seed(cfg, s) for s in args.seeds}
    per_seed = {name: {s: runs[s][name] for s in args.seeds} for name in ROWS}
    if args.engine_from:
        per_seed.update(engine_rows(args.engine_from))
    d = cfg.distill
    print(f"\nFashion-MNIST test accuracy, seeds {args.seeds}: {Path(args.config).name} "
          f"(T={d.temperature:g}, alpha={d.alpha:g}, {d.epochs} epochs, {d.scheduler} schedule)")
    table(per_seed, args.seeds)
    print(json.dumps({"benchmark": "kd_fashion", "config": args.config, "overrides": args.overrides,
                      "per_seed": {k: {str(s): v for s, v in vals.items()} for k, vals in per_seed.items()}}))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
