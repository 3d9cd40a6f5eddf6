"""What a finished sweep leaves behind: ``results.csv``, ``heatmap.png``, ``curves.png``,
``best.yaml`` and the top-k table. Pure functions over plain rows (no Ray import), so they are
tested without a cluster; :mod:`raydistill.tuning.sweep` turns Tune's trials into rows.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml

from raydistill.core.artifacts import stamped_name
from raydistill.core.config import Config, config_from_dict, save_config, saved_run_config

SWEEP_CONFIG_FILE = "sweep.yaml"  # the sweep's own config, saved before any trial

RESULTS_FILE, HEATMAP_FILE, CURVES_FILE, BEST_FILE = "results.csv", "heatmap.png", "curves.png", "best.yaml"
COLUMNS = ["trial_id", "trial_index", "status", "method", "temperature", "alpha", "lr", "final_val_accuracy",
           "best_val_accuracy", "final_val_loss", "score", "epochs_run", "early_stopped", "wall_time_s",
           "retries", "chosen", "test_accuracy", "error"]


def error_message(trace: str | None) -> str:
    """The exception line of a Tune error trace (``"RuntimeError: ..."``), or ``""``."""
    if not trace:
        return ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    exception_lines = [ln for ln in lines if ln.split(":", 1)[0].endswith(("Error", "Exception", "Interrupt"))]
    return (exception_lines or lines)[-1][:300]


def trial_row(*, trial_id: str, trial_index: int | None, status: str, config: dict, default_lr: float,
              default_method: str,
              history: pd.DataFrame, metric: str, max_epochs: int, wall_time_s: float, retries: int,
              error: str) -> dict:
    """One ``results.csv`` row. ``history`` has one row per epoch (columns ``epoch``,
    ``val_accuracy``, ``val_loss``, ...); ``score`` is ``metric`` at the last epoch."""
    last = history.iloc[-1] if len(history) else None
    epochs_run = int(last["epoch"]) if last is not None else 0
    return {
        "trial_id": trial_id, "trial_index": trial_index, "status": status,
        "method": str(config.get("method", default_method)),
        "temperature": float(config["temperature"]), "alpha": float(config["alpha"]),
        "lr": float(config.get("lr", default_lr)),
        "final_val_accuracy": float(last["val_accuracy"]) if last is not None else math.nan,
        "best_val_accuracy": float(history["val_accuracy"].max()) if last is not None else math.nan,
        "final_val_loss": float(last["val_loss"]) if last is not None else math.nan,
        "score": float(last[metric]) if last is not None else math.nan,
        "epochs_run": epochs_run,
        "early_stopped": status == "TERMINATED" and epochs_run < max_epochs,
        "wall_time_s": round(float(wall_time_s), 3), "retries": int(retries),
        "chosen": False, "test_accuracy": math.nan, "error": error,
    }


def epoch_history(progress: pd.DataFrame | None) -> pd.DataFrame:
    """Per-epoch rows of a trial's progress (a resumed trial may repeat an epoch: keep the last)."""
    if progress is None or len(progress) == 0 or "epoch" not in progress:
        return pd.DataFrame(columns=["epoch", "val_accuracy", "val_loss", "train_loss"])
    return progress.dropna(subset=["epoch"]).drop_duplicates("epoch", keep="last").sort_values("epoch")


def missing_epochs(history: pd.DataFrame) -> list[int]:
    """Epochs ``1 .. last`` that ``history`` lacks (Tune restarts a trial's progress log when the
    trial resumes past Tune's last registered checkpoint; see ``tuning.trial.resume_state``)."""
    if len(history) == 0:
        return []
    seen = {int(e) for e in history["epoch"]}
    return [e for e in range(1, max(seen) + 1) if e not in seen]


def fill_history(history: pd.DataFrame, checkpoint_history: Sequence[dict]) -> pd.DataFrame:
    """``history`` plus the epochs it lacks, taken from the trial's own record (the metric dicts
    its checkpoint keeps, one per epoch); rows ``history`` has are kept as they are."""
    gaps = set(missing_epochs(history))
    extra = [row for row in checkpoint_history if int(row.get("epoch", 0)) in gaps]
    if not extra:
        return history
    return pd.concat([history, pd.DataFrame(extra)], ignore_index=True).sort_values("epoch").reset_index(drop=True)


def diverged(row: dict) -> bool:
    """A trial whose last validation loss is NaN/inf: its model answers NaN, so it is never ranked
    or chosen (its weights could not be saved anyway), whatever its score says."""
    loss = row.get("final_val_loss")
    return loss is not None and not math.isfinite(loss)


def ranked(rows: Sequence[dict], mode: str) -> list[dict]:
    """The trials a sweep may rank -- finished, with a finite score and a finite validation loss --
    best ``score`` first (``mode`` = max | min; ties keep the rows' order)."""
    done = [r for r in rows if r["status"] == "TERMINATED" and math.isfinite(r["score"]) and not diverged(r)]
    return sorted(done, key=lambda r: r["score"], reverse=(mode == "max"))


def best_row(rows: Sequence[dict], mode: str) -> dict | None:
    """The finished trial with the best ``score`` (``mode`` = max | min) among :func:`ranked`; None if
    none finished (or all diverged)."""
    done = ranked(rows, mode)
    return done[0] if done else None


def write_results(rows: Sequence[dict], sweep_dir: Path) -> Path:
    path = Path(sweep_dir) / RESULTS_FILE
    frame = pd.DataFrame(list(rows), columns=COLUMNS).sort_values("trial_index", na_position="last")
    frame.to_csv(path, index=False)
    return path


def format_top_table(rows: Sequence[dict], *, mode: str, k: int, metric: str) -> str:
    """The top ``k`` finished trials by ``score``, then any failed ones, as a fixed-width table."""
    done = ranked(rows, mode)
    failed = [r for r in rows if r["status"] == "ERROR" or (r["status"] == "TERMINATED" and diverged(r))]
    header = (f"{'rank':>4}  {'trial':<12}{'method':>9}{'T':>7}{'alpha':>7}{'lr':>9}{metric:>14}{'best val':>10}"
              f"{'epochs':>7}{'stopped':>8}{'time s':>8}  status")
    lines = [header, "-" * len(header)]
    for rank, r in enumerate(done[:k], 1):
        lines.append(f"{rank:>4}  {r['trial_id']:<12}{r['method']:>9}{r['temperature']:>7.2f}{r['alpha']:>7.3f}{r['lr']:>9.2e}"
                     f"{r['score']:>14.4f}{r['best_val_accuracy']:>10.4f}{r['epochs_run']:>7}"
                     f"{'yes' if r['early_stopped'] else 'no':>8}{r['wall_time_s']:>8.1f}  "
                     f"{r['status']}{'  <- chosen' if r['chosen'] else ''}")
    for r in failed:
        lines.append(f"{'-':>4}  {r['trial_id']:<12}{r['method']:>9}{r['temperature']:>7.2f}{r['alpha']:>7.3f}{r['lr']:>9.2e}"
                     f"{'':>14}{'':>10}{r['epochs_run']:>7}{'':>8}{r['wall_time_s']:>8.1f}  "
                     + (f"ERROR: {r['error']}" if r["status"] == "ERROR" else "DIVERGED: validation loss is NaN/inf"))
    return "\n".join(lines)


def plot_heatmap(rows: Sequence[dict], best: dict, path: Path) -> Path:
    """Final val accuracy over the (T, alpha) plane: one marker per trial, the best starred, failed
    trials as grey crosses; a sweep over several ``distill.method`` values gets one panel per method
    on one shared colour scale (so the methods' points do not hide each other). T is on a log axis
    when the range spans a factor >= 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not math.isnan(r["final_val_accuracy"]) and r["status"] != "ERROR"]
    bad = [r for r in rows if r["status"] == "ERROR"]
    methods = sorted({r["method"] for r in rows}) or [best.get("method", "")]
    fig, axes = plt.subplots(1, len(methods), figsize=(1.6 + 4.6 * len(methods), 5.2), sharey=True, squeeze=False)
    accuracies = [r["final_val_accuracy"] for r in ok] or [0.0]
    temps = [r["temperature"] for r in rows]
    points = None
    for ax, method in zip(axes[0], methods):
        mine = [r for r in ok if r["method"] == method]
        if mine:
            points = ax.scatter([r["temperature"] for r in mine], [r["alpha"] for r in mine], s=260, marker="s",
                                c=[r["final_val_accuracy"] for r in mine], cmap="viridis", vmin=min(accuracies),
                                vmax=max(accuracies), edgecolors="k")
        failed = [r for r in bad if r["method"] == method]
        if failed:
            ax.scatter([r["temperature"] for r in failed], [r["alpha"] for r in failed], marker="x", c="grey", s=80,
                       label="failed")
        if best.get("method", method) == method:
            ax.scatter([best["temperature"]], [best["alpha"]], marker="*", s=420, c="red", edgecolors="k",
                       label=f"best: {best['method']} T={best['temperature']:.2f}, alpha={best['alpha']:.2f} "
                             f"({best['score']:.3f})")
        if min(temps) > 0 and max(temps) / min(temps) >= 4:
            ax.set_xscale("log")
        if len(set(temps)) <= 8:  # a grid: label its temperatures, not the log axis' decades
            ax.minorticks_off()
            ax.set_xticks(sorted(set(temps)), [f"{t:g}" for t in sorted(set(temps))])
        ax.set(xlabel="temperature T", title=f"method {method}" if len(methods) > 1 else "")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    axes[0][0].set_ylabel("alpha (weight of the hard-label CE term)")
    if points is not None:
        fig.colorbar(points, ax=list(axes[0]), label="final val accuracy")
    fig.suptitle("Student val accuracy over (T, alpha)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_curves(histories: dict[str, pd.DataFrame], rows: Sequence[dict], *, k: int, mode: str,
                path: Path) -> Path:
    """Val accuracy per epoch: the top ``k`` trials labelled, every other trial in light grey
    (ASHA's early stops show as short grey lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ranked(rows, mode)
    top = {r["trial_id"] for r in order[:k]}
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for r in rows:
        h = histories.get(r["trial_id"])
        if h is None or not len(h) or r["trial_id"] in top:
            continue
        ax.plot(h["epoch"], h["val_accuracy"], color="0.8", linewidth=1)
    for r in order[:k]:
        h = histories[r["trial_id"]]
        ax.plot(h["epoch"], h["val_accuracy"], marker="o", markersize=3,
                label=f"{r['trial_id']}: T={r['temperature']:.2f}, a={r['alpha']:.2f}")
    ax.set(xlabel="epoch", ylabel="val accuracy", title=f"Top {min(k, len(order))} trials (grey: the rest)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def best_config(cfg: Config, best: dict, *, teacher: str) -> Config:
    """A complete distill config with the best trial's values (and the sweep's teacher) filled in."""
    distill = dataclasses.replace(cfg.distill, method=best["method"], temperature=best["temperature"], alpha=best["alpha"],
                                  lr=best["lr"], epochs=int(best["epochs_run"]),
                                  teacher=teacher if not cfg.distill.teachers else cfg.distill.teacher)
    run = dataclasses.replace(cfg.run, storage_path=str(cfg.storage_dir()))
    return config_from_dict(dataclasses.replace(cfg, run=run, distill=distill).to_dict())  # re-validated


def write_best_yaml(cfg: Config, best: dict, *, teacher: str, sweep_dir: Path) -> Path:
    """``best.yaml``: ready for ``raydistill distill --config best.yaml``."""
    path = Path(sweep_dir) / BEST_FILE
    header = (f"# Written by `raydistill tune`: sweep {sweep_dir}, trial {best['trial_id']} "
              f"({best['score']:.4f}).\n# Run it: raydistill distill --config {path}\n")
    path.write_text(header + yaml.safe_dump(best_config(cfg, best, teacher=teacher).to_dict(), sort_keys=False))
    return path


# --- the sweep directory -----------------------------------------------------------------------


def new_sweep_dir(cfg: Config) -> Path:
    """``<storage>/tune/<run.name>-<UTC time>-<hex>``, holding ``sweep.yaml`` (the config, teacher
    pinned) from the start so that ``--resume`` needs nothing else."""
    path = cfg.storage_dir() / "tune" / stamped_name(cfg.run.name)
    path.mkdir(parents=True)
    save_config(cfg, path / SWEEP_CONFIG_FILE)
    return path


def resumed_config(cfg: Config, resume_dir: Path) -> Config:
    """The sweep's own saved config (search space and teacher are fixed), with this call's
    ``run.address``/``run.quiet``/``run.verbose``."""
    return saved_run_config(cfg, resume_dir / SWEEP_CONFIG_FILE, what="sweep")