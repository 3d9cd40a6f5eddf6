"""What a federated run leaves behind: ``rounds.csv``, ``accuracy.png``, the partition summary,
and the final global model as a ``federated`` artifact with its model card. No Ray."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

from raydistill.core.artifacts import new_artifact_path, save_artifact, stamped_name
from raydistill.core.cards import build_card, method_record, parent_entry
from raydistill.federated.rounds import CSV_COLUMNS, RoundRecord

__all__ = ["new_run_dir", "RoundsCsv", "plot_accuracy", "plot_curves", "write_federated_artifact"]


def new_run_dir(storage: Path, name: str, strategy: str) -> Path:
    """``<storage>/federated/<name>-<strategy>-<UTC time>-<4 hex>``, created."""
    path = Path(storage) / "federated" / stamped_name(f"{name}-{strategy}")
    path.mkdir(parents=True)
    return path


class RoundsCsv:
    """Appends one row per round and flushes, so a killed run still leaves its finished rounds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "w", newline="") as fh:
            csv.DictWriter(fh, CSV_COLUMNS).writeheader()

    def append(self, record: RoundRecord) -> None:
        row = record.row()
        row["test_accuracy"] = f"{row['test_accuracy']:.6f}"
        row["test_loss"] = f"{row['test_loss']:.6f}"
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, CSV_COLUMNS).writerow(row)


def plot_curves(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: Path, *, title: str,
                references: Mapping[str, float] | None = None) -> Path:
    """Accuracy per round, one line per curve, dashed horizontal lines for ``references``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, (rounds, accuracy) in curves.items():
        ax.plot(rounds, accuracy, marker="o", markersize=3, label=label)
    for i, (label, value) in enumerate((references or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{len(curves) + i}", label=f"{label} ({value:.3f})")
    ax.set(xlabel="round", ylabel="global test accuracy", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_accuracy(records: Sequence[RoundRecord], central_accuracy: float | None, path: Path, *, title: str) -> Path:
    """``accuracy.png``: the run's rounds (failed rounds left out) and the central reference line."""
    ok = [r for r in records if r.status == "ok"]
    refs = {"central": central_accuracy} if central_accuracy is not None else None
    return plot_curves({"federated": ([r.round for r in ok], [r.test_accuracy for r in ok])}, path, title=title,
                       references=refs)


def write_federated_artifact(plan, state, records: Sequence[RoundRecord], *, central: Mapping, run_dir: Path,
                             status: str, extra: Mapping) -> Path:
    """The last good global model as a ``federated`` artifact; the card carries the run's story."""
    cfg, f = plan.cfg, plan.cfg.federated
    good = [r for r in records if r.status == "ok"]
    last = good[-1]
    history = [{**r.row(), "details": r.details} for r in records]
    metrics = {"test_accuracy": last.test_accuracy, "test_loss": last.test_loss, "val_accuracy": None,
               "central_test_accuracy": central.get("accuracy"), "rounds_completed": last.round, "history": history}
    parents = [parent_entry(plan.teacher[0], plan.teacher[1], role="client_teacher")] if plan.teacher else []
    federated = {"strategy": f.strategy, "clients": f.clients, "rounds": f.rounds, "fraction": f.fraction,
                 "clients_per_round": plan.per_round, "local_epochs": f.local_epochs, "batch_size": f.batch_size,
                 "lr": f.lr, "optimizer": f.optimizer, "mu": f.mu if f.strategy == "fedprox" else None,
                 "augment": asdict(f.augment),
                 "partition": _partition_card(plan), "status": status, "run_dir": str(run_dir),
                 "central_reference": dict(central), **extra}
    if f.strategy == "feddf":
        federated["feddf"] = {"proxy_examples": len(plan.proxy_x), "distill_epochs": f.distill_epochs,
                              "temperature": f.distill_temperature, "lr": f.distill_lr,
                              **method_record(cfg.distill, f.method)}
    if plan.teacher:
        federated["client_kd"] = {"teacher": str(plan.teacher[0]), "alpha": f.client_kd_alpha,
                                  "temperature": f.distill_temperature, **method_record(cfg.distill, f.method)}
    card = build_card(kind="federated", model_name=f.model.name, model_args=f.model.args, bundle=plan.bundle,
                      seed=cfg.run.seed, metrics=metrics, parents=parents, federated=federated)
    path = save_artifact(new_artifact_path(cfg.storage_dir(), "federated"), _torch_state(state), card)
    (Path(run_dir) / "artifact.json").write_text(json.dumps({"path": str(path)}))
    return path


def _partition_card(plan) -> dict:
    from raydistill.federated.partition import label_histogram, label_skew

    f = plan.cfg.federated
    hist = label_histogram(plan.partitions, plan.pool_y, plan.bundle.num_classes)
    sizes = hist.sum(axis=1)
    return {"kind": f.partition, "dirichlet_alpha": f.dirichlet_alpha if f.partition == "dirichlet" else None,
            "min_partition_size": f.min_partition_size, "seed": plan.cfg.run.seed, "examples": int(sizes.sum()),
            "size_min": int(sizes.min()), "size_max": int(sizes.max()), "label_skew": round(label_skew(hist), 4)}


def _torch_state(state):
    from raydistill.federated.aggregate import to_torch_state

    return to_torch_state(state)
