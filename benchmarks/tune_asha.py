"""ASHA vs full budget on the same (T, alpha) grid, in one run, through the real sweep
(``raydistill.tuning.sweep.run_sweep``): one teacher, then the grid with ``tune.scheduler=asha`` and
with ``tune.scheduler=none``, ``--repeats`` times (medians reported: single runs are noisy here). For each: wall time of the whole sweep (soft targets, trials,
chosen student), trial-epochs run, best val accuracy, and the chosen student's test accuracy.
Goal (issue 3): ASHA within 0.5 pt of the full-budget best val accuracy in <= 0.4x its time.
``--plain 1 2`` also times, in each repeat, ``benchmarks/plain_tune.py`` -- the plain PyTorch grid search
a user would write instead (the same grid, student, recipe and budget; 1 or 2 processes) -- as the
baseline both sweeps are compared with.

    flock /tmp/raydistill-ray.lock .venv/bin/python benchmarks/tune_asha.py \
        --config configs/digits.yaml --temperatures 1 3 8 20 --alphas 0.1 0.4 0.7 0.9
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raydistill.core.config import ConfigError, load_config
from raydistill.runtime import init_ray
from raydistill.tuning.sweep import ensure_teacher, expected_trials, run_sweep


def grid_config(cfg, temperatures: list[float], alphas: list[float], scheduler: str, methods: list[str] = ()):
    """The same grid, once per scheduler (num_samples=1: each grid point is one trial); ``methods``
    adds ``distill.method`` as a grid axis (``tune.method``)."""
    tune = dataclasses.replace(cfg.tune, scheduler=scheduler, num_samples=1, temperature_search="grid",
                               temperature=temperatures, alpha_search="grid", alpha=alphas, searcher="random",
                               method=list(methods))
    return dataclasses.replace(cfg, tune=tune)


def measure(cfg) -> dict:
    start = time.perf_counter()
    result = run_sweep(cfg)
    wall = time.perf_counter() - start
    return {"scheduler": cfg.tune.scheduler, "trials": len(result.rows), "wall_s": wall,
            "trial_epochs": int(sum(r["epochs_run"] for r in result.rows)),
            "trial_seconds": float(sum(r["wall_time_s"] for r in result.rows)),
            "early_stopped": int(sum(bool(r["early_stopped"]) for r in result.rows)),
            "best_val_accuracy": result.best["score"], "test_accuracy": result.best["test_accuracy"],
            "best_T": result.best["temperature"], "best_alpha": result.best["alpha"],
            "best_method": result.best.get("method", cfg.distill.method),
            "trials_s": result.timings["trials_s"], "sweep": str(result.sweep_dir)}


PLAIN_SCRIPT = Path(__file__).with_name("plain_tune.py")


def plain_command(cfg, temperatures: list[float], alphas: list[float], methods: list[str], procs: int) -> list[str]:
    """``plain_tune.py``'s command line for the same grid, data, student and recipe as ``cfg``'s sweep; its
    teacher is trained by the first plain run and reused by the others (``--teacher-file``)."""
    student, d = cfg.distill.student, cfg.distill
    teacher = cfg.teacher.model
    if student.name != "mlp" or teacher.name != "mlp" or cfg.data.name not in ("fashion_mnist", "mnist") or not cfg.data.root \
            or d.augment.active() or d.cached_views \
            or d.optimizer != "adam" or d.scheduler != "none" or d.weight_decay or d.label_smoothing or d.mode != "cached":
        raise ConfigError("--plain: plain_tune.py writes out only MLP teachers and students on (fashion_)mnist files "
                          "(data.root set) with Adam at a constant "
                          "lr, no augmentation, no weight decay or label smoothing, and cached soft targets")
    return [sys.executable, str(PLAIN_SCRIPT), "--root", str(Path(cfg.data.root).resolve()), "--procs", str(procs),
            "--methods", *(methods or [d.method]), "--temperatures", *map(str, temperatures),
            "--alphas", *map(str, alphas), "--hidden", *map(str, student.args.get("hidden", [])),
            "--epochs", str(cfg.tune.max_epochs), "--batch", str(d.batch_size), "--lr", str(d.lr),
            "--teacher-epochs", str(cfg.teacher.epochs), "--seed", str(cfg.run.seed),
            "--teacher-hidden", *map(str, teacher.args.get("hidden", [])),
            "--teacher-file", str(Path(cfg.run.storage_path) / "plain_teacher.pt")]


def measure_plain(command: list[str]) -> dict:
    """Run the plain grid search; its own timing covers data loading, the logits, the grid and the test
    score (not the interpreter start or its teacher, as the sweeps' wall time leaves out Ray's start and theirs)."""
    out = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    method, temperature, alpha = out["best"]
    return {"scheduler": f"plain x{out['procs']}", "trials": out["trials"], "wall_s": out["sweep_s"],
            "trial_epochs": out["trials"] * out["epochs"], "trials_s": math.nan, "early_stopped": 0,
            "best_val_accuracy": out["best_val_accuracy"], "test_accuracy": out["test_accuracy"],
            "best_T": temperature, "best_alpha": alpha, "best_method": method}


def print_table(runs: list[dict], max_epochs: int) -> None:
    header = (f"{'scheduler':<10}{'trials':>7}{'epochs':>8}{'stopped':>8}{'wall s':>8}{'Tune s':>8}"
              f"{'best val':>10}{'test acc':>10}  best (method, T, alpha)")
    print("\n" + header + "\n" + "-" * len(header))
    for r in runs:
        print(f"{r['scheduler']:<10}{r['trials']:>7}{r['trial_epochs']:>8}{r['early_stopped']:>8}{r['wall_s']:>8.1f}"
              f"{r['trials_s']:>8.1f}{r['best_val_accuracy']:>10.4f}{r['test_accuracy']:>10.4f}"
              f"  ({r['best_method']}, {r['best_T']:g}, {r['best_alpha']:g})")
    print(f"(epochs: trial-epochs run, of {runs[0]['trials']} x {max_epochs}; wall s: the whole sweep incl. soft "
          f"targets and the chosen student; Tune s: Tuner.fit only)")


def summarize(repeats: list[tuple[dict, ...]]) -> dict:
    """Per repeat (ASHA run, full-budget run, plain runs...): wall-time ratios and best-val gap; then their
    medians. ``vs_plain`` holds, per plain run, the sweeps' wall time over the plain grid search's."""
    ratios = [a["wall_s"] / f["wall_s"] for a, f, *_ in repeats]
    tune_ratios = [a["trials_s"] / f["trials_s"] for a, f, *_ in repeats]
    gaps = [100 * (f["best_val_accuracy"] - a["best_val_accuracy"]) for a, f, *_ in repeats]
    med = statistics.median
    vs_plain = {}
    for i, plain in enumerate(repeats[0][2:], start=2):
        full = [r[1]["wall_s"] / r[i]["wall_s"] for r in repeats]
        asha = [r[0]["wall_s"] / r[i]["wall_s"] for r in repeats]
        vs_plain[plain["scheduler"]] = {"full_over_plain": full, "asha_over_plain": asha,
                                        "full_over_plain_median": med(full), "asha_over_plain_median": med(asha)}
    return {"time_ratios": ratios, "tune_time_ratios": tune_ratios, "val_gaps_pts": gaps,
            "time_ratio": med(ratios), "tune_time_ratio": med(tune_ratios), "val_gap_pts": med(gaps),
            "goal_met": med(gaps) <= 0.5 and med(ratios) <= 0.4, "vs_plain": vs_plain}


def keep_plots(run: dict, out_dir: str, stem: str) -> None:
    """Copy a sweep's heatmap and curves next to the benchmark's other results."""
    for name in ("heatmap", "curves"):
        source = Path(run["sweep"]) / f"{name}.png"
        if source.exists():
            shutil.copyfile(source, Path(out_dir) / f"tune_{name}_{stem}.png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 3.0, 8.0, 20.0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.4, 0.7, 0.9])
    parser.add_argument("--methods", nargs="*", default=[],
                        help="distill.method values as a third grid axis (e.g. kd dkd kd+lskd dkd+lskd)")
    parser.add_argument("--repeats", type=int, default=3, help="ASHA + full-budget pairs, run one after the other")
    parser.add_argument("--plots", default="", help="a folder to copy the last repeat's heatmap/curves into")
    parser.add_argument("--plain", type=int, nargs="*", default=[], metavar="PROCS",
                        help="also time benchmarks/plain_tune.py with this many processes (e.g. 1 2) in each repeat")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    if args.repeats < 1 or any(p < 1 for p in args.plain):
        raise ConfigError("--repeats and --plain must be >= 1")
    storage = tempfile.mkdtemp(prefix="rd-tune-asha-")
    # 1-worker trials (2 at a time on 2 CPUs) unless --set distill.workers=N says otherwise
    cfg = load_config(args.config, ["distill.workers=1", *args.overrides, f"run.storage_path={storage}",
                                    "run.quiet=true"])
    plain = [plain_command(cfg, args.temperatures, args.alphas, args.methods, p) for p in args.plain]  # checked before Ray
    init_ray(cfg.run.address)
    start = time.perf_counter()
    cfg = ensure_teacher(cfg)  # one teacher, trained once, shared by every sweep
    teacher_s = time.perf_counter() - start
    pairs = []
    for _ in range(args.repeats):
        sweeps = tuple(measure(grid_config(cfg, args.temperatures, args.alphas, s, args.methods)) for s in ("asha", "none"))
        pairs.append(sweeps + tuple(measure_plain(command) for command in plain))
        print_table(list(pairs[-1]), cfg.tune.max_epochs)
    if args.plots:
        keep_plots(pairs[-1][0], args.plots, f"{cfg.run.name}_asha")
        keep_plots(pairs[-1][1], args.plots, f"{cfg.run.name}_full")
    t, summary = cfg.tune, summarize(pairs)
    per = ", ".join(f"{r:.2f}x/{g:+.2f} pt" for r, g in zip(summary["time_ratios"], summary["val_gaps_pts"]))
    print(f"\n{cfg.data.name}, {pairs[0][0]['trials']}-point grid, max_epochs={t.max_epochs}, "
          f"ASHA grace={t.grace_period} rf={t.reduction_factor}; teacher trained once in {teacher_s:.0f} s\n"
          f"per repeat (ASHA/full wall time, best val gap): {per}\nmedian ASHA/full wall time = "
          f"{summary['time_ratio']:.2f}x (Tuner.fit alone {summary['tune_time_ratio']:.2f}x), median best val gap = "
          f"{summary['val_gap_pts']:+.2f} pt -> goal (<= 0.5 pt in <= 0.4x) {'met' if summary['goal_met'] else 'NOT met'}")
    for name, v in summary["vs_plain"].items():
        print(f"vs the plain grid search ({name}): full-budget sweep {v['full_over_plain_median']:.2f}x, "
              f"ASHA {v['asha_over_plain_median']:.2f}x its wall time (medians; per repeat "
              + ", ".join(f"{f:.2f}x/{a:.2f}x" for f, a in zip(v["full_over_plain"], v["asha_over_plain"])) + ")")
    print(json.dumps({"benchmark": "tune_asha", "dataset": cfg.data.name, "grid": {"temperature": args.temperatures,
                      "alpha": args.alphas, "method": args.methods}, "trials": expected_trials(grid_config(
                      cfg, args.temperatures, args.alphas, "none", args.methods)), "max_epochs": t.max_epochs, "grace_period": t.grace_period,
                      "reduction_factor": t.reduction_factor, "teacher_s": teacher_s,
                      "runs": [r for pair in pairs for r in pair], **summary}))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
