"""The end-to-end run behind ``make demo``: teacher -> distilled student -> student alone,
then one table comparing them."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .artifacts import load_card, mark_chosen
from .config import Config
from .stages import start


def summary_rows(paths: dict[str, Path]) -> list[dict]:
    """One row per artifact: accuracy, parameters, compression against the teacher."""
    cards = {name: load_card(p) for name, p in paths.items()}
    teacher_params = cards["teacher"]["parameters"]
    return [{"model": name, "architecture": c["architecture"]["name"] + str(c["architecture"]["args"].get("hidden", "")),
             "test_accuracy": c["metrics"]["test_accuracy"], "parameters": c["parameters"],
             "compression": teacher_params / c["parameters"], "artifact": str(paths[name])}
            for name, c in cards.items()]


def format_table(rows: list[dict]) -> str:
    header = f"{'model':<18}{'architecture':<22}{'test acc':>9}{'params':>12}{'compression':>13}  artifact"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['model']:<18}{r['architecture']:<22}{r['test_accuracy']:>9.4f}{r['parameters']:>12,}"
                     f"{r['compression']:>12.1f}x  {r['artifact']}")
    return "\n".join(lines)


def run_pipeline(cfg: Config, args=None) -> dict[str, Path]:
    from .train import distill_student, train_teacher

    start(cfg, "pipeline")
    teacher = train_teacher(cfg)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher=str(teacher), teachers=[]))
    student = distill_student(cfg)
    mark_chosen(student, cfg.storage_dir())
    baseline = distill_student(cfg, baseline=True)
    paths = {"teacher": teacher, "student-alone": baseline, "distilled-student": student}
    print("\n" + format_table(summary_rows(paths)), flush=True)
    print(f"\nchosen student: {student}\nartifacts under: {cfg.storage_dir() / 'artifacts'}", flush=True)
    return paths
