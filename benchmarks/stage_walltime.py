"""Wall time and test accuracy of `raydistill teacher / baseline / distill` against the plain PyTorch
script (benchmarks/plain_torch.py) with the same nets, epochs, batch and recipe, on the same cores.

Hinton et al.'s MNIST nets on Fashion-MNIST: teacher MLP 1200-1200 (dropout 0.5), student 800-800,
Adam 1e-3 at a constant lr, batch 128, T=20, alpha=0.1, all 60,000 training images (the platform
with ``data.val_fraction=0``). Every command is timed whole (interpreter start-up, data loading,
Ray start, checkpoints, test evaluation included). Seeds run one after another; within a seed the
plain and platform commands alternate, so drift of this VM hits both sides alike.

    .venv/bin/python benchmarks/stage_walltime.py [--seeds 0 1 2] [--epochs 20]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _paths import FASHION, REPO

STAGES = ("teacher", "baseline", "distill")


def platform_sets(root: str, storage: str, epochs: int, seed: int) -> list[str]:
    """The plain script's settings, spelled as raydistill overrides (schema defaults otherwise)."""
    sets = [f"run.storage_path={storage}", f"run.seed={seed}", "run.quiet=true", "run.name=walltime",
            "data.name=fashion_mnist", f"data.root={root}", "data.val_fraction=0", "pipeline.tune=false",
            "teacher.model.args={hidden: [1200, 1200], dropout: 0.5}", "distill.student.args={hidden: [800, 800]}",
            "distill.temperature=20", "distill.alpha=0.1",
            "run.tracking=false"]  # the plain script tracks nothing either (MLflow adds ~2 s per command)
    for section in ("teacher", "distill"):
        sets += [f"{section}.epochs={epochs}", f"{section}.batch_size=128", f"{section}.lr=0.001",
                 f"{section}.optimizer=adam", f"{section}.scheduler=none", f"{section}.workers=auto"]
    return sets


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def newest_card(storage: Path, kind: str) -> dict:
    cards = sorted((storage / "artifacts" / kind).glob(f"{kind}-*/model.json"))
    return json.loads(cards[-1].read_text())


def run_seed(seed: int, args, env: dict) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"walltime-{seed}-"))
    storage, plain_out = work / "runs", work / "plain"
    raydistill = str(Path(sys.executable).with_name("raydistill"))
    sets = [a for s in platform_sets(args.root, str(storage), args.epochs, seed) for a in ("--set", s)]
    rows = {}
    for stage in STAGES:
        plain_cmd = [sys.executable, "benchmarks/plain_torch.py", "--stage", stage, "--root", args.root,
                     "--out", str(plain_out), "--epochs", str(args.epochs), "--seed", str(seed)]
        plain_wall, out = timed(plain_cmd, env)
        plain = json.loads(out.strip().splitlines()[-1])
        extra = ["--set", "distill.teacher=latest:teacher"] if stage == "distill" else []
        ours_wall, _ = timed([raydistill, stage, *sets, *extra], env)
        card = newest_card(storage, {"distill": "student"}.get(stage, stage))
        epochs = sum(h["epoch_time_s"] for h in card["metrics"]["history"])
        rows[stage] = {"plain_s": plain_wall, "raydistill_s": ours_wall, "ratio": ours_wall / plain_wall,
                       "raydistill_epochs_s": epochs, "plain_acc": plain["test_accuracy"],
                       "raydistill_acc": card["metrics"]["test_accuracy"],
                       "threads": card["metrics"]["history"][-1].get("threads")}
        r = rows[stage]
        print(f"seed {seed} {stage:<9} plain {r['plain_s']:6.1f} s acc {r['plain_acc']:.4f} | raydistill "
              f"{r['raydistill_s']:6.1f} s (epochs {epochs:6.1f} s, {r['threads']} threads) acc "
              f"{r['raydistill_acc']:.4f} | ratio {r['ratio']:.2f}x", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--root", default=str(FASHION))
    args = parser.parse_args()
    env = {**os.environ, "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp/raydistill-ray")}
    Path(env["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
    results = {seed: run_seed(seed, args, env) for seed in args.seeds}
    print(f"\nFashion-MNIST, {args.epochs} epochs, seeds {args.seeds}: median over seeds (every seed above)")
    print(f"{'stage':<10}{'plain s':>9}{'raydistill s':>14}{'ratio':>7}{'plain acc':>11}{'raydistill acc':>16}")
    for stage in STAGES:
        med = {k: statistics.median(results[s][stage][k] for s in args.seeds)
               for k in ("plain_s", "raydistill_s", "ratio", "plain_acc", "raydistill_acc")}
        print(f"{stage:<10}{med['plain_s']:>9.1f}{med['raydistill_s']:>14.1f}{med['ratio']:>6.2f}x"
              f"{med['plain_acc']:>11.4f}{med['raydistill_acc']:>16.4f}")
    print(json.dumps({"benchmark": "stage_walltime", "epochs": args.epochs, "results": results}))


if __name__ == "__main__":
    main()
