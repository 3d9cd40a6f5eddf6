"""Federated clients on Ray actors: scale (C = 10, 100, 1,000 on Fashion-MNIST) and accuracy
(FedAvg vs FedProx vs FedDF vs central, IID and non-IID digits). Prints two tables and one JSON line.

    flock /tmp/raydistill-ray.lock python benchmarks/federated_scale.py \
        --fashion-root ../shared/datasets/fashion-mnist

Scale: 10% of the clients per round, one local epoch, MLP 784-64-10, Dirichlet(0.5) label skew;
every client holds a real slice of the 54,000 training images. Round wall time, rounds/s and the
peak memory (RSS and PSS summed over the whole local Ray session: driver, GCS, raylet, actors)
during the rounds. One pool of actors (sized from the CPUs) serves every run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray

from raydistill.core.config import load_config
from raydistill.core.data import load_data
from raydistill.federated.actors import ActorPool
from raydistill.federated.plan import pool_size
from raydistill.federated.server import run_federated
from raydistill.runtime import cluster_cpus, init_ray

from _paths import FASHION, REPO


PARTITIONS = {"IID": ["federated.partition=iid"],
              "Dirichlet alpha=1.0": ["federated.partition=dirichlet", "federated.dirichlet_alpha=1.0"],
              "Dirichlet alpha=0.1": ["federated.partition=dirichlet", "federated.dirichlet_alpha=0.1"]}
STRATEGIES = {"fedavg": [], "fedprox": ["federated.mu=0.1"],
              "feddf": ["federated.distill_epochs=10", "federated.proxy_fraction=0.1"]}


def scale_row(clients: int, args, pool: ActorPool, storage: Path) -> dict:
    cfg = load_config(REPO / "configs/federated_fashion.yaml", [
        f"run.storage_path={storage}", "run.quiet=true", f"data.root={args.fashion_root}",
        f"federated.clients={clients}", f"federated.rounds={args.scale_rounds}", "federated.fraction=0.1",
        "federated.min_clients=1", "federated.min_partition_size=5"])
    result = run_federated(cfg, pool=pool)
    rounds = result.records[1:]
    walls = [r.wall_s for r in rounds]
    return {"clients": clients, "per_round": rounds[0].sampled, "round_s_mean": round(statistics.mean(walls), 3),
            "round_s_max": round(max(walls), 3), "rounds_per_s": round(1 / statistics.mean(walls), 3),
            "peak_rss_mb": max(r.peak_rss_mb for r in rounds), "peak_pss_mb": max(r.peak_pss_mb for r in rounds),
            "accuracy": round(result.final_accuracy, 4), "central_accuracy": round(result.central["accuracy"], 4),
            "central_epochs": result.central["epochs"], "run_s": round(result.seconds, 1)}


def accuracy_runs(args, pool: ActorPool, storage: Path) -> tuple[list[dict], dict]:
    rows, curves = [], {}
    for part, part_overrides in PARTITIONS.items():
        for strategy, overrides in STRATEGIES.items():
            cfg = load_config(REPO / "configs/digits.yaml", [
                f"run.storage_path={storage}", "run.quiet=true", f"federated.strategy={strategy}",
                f"federated.clients={args.acc_clients}", f"federated.rounds={args.acc_rounds}",
                f"federated.fraction={args.acc_fraction}", "federated.min_partition_size=5",
                *part_overrides, *overrides])
            result = run_federated(cfg, pool=pool)
            curve = ([r.round for r in result.records], [r.test_accuracy for r in result.records])
            curves.setdefault(part, {})[strategy] = curve
            if strategy == "fedavg":  # central on every client's data (FedDF's pool lacks the proxy slice)
                curves[part]["central"] = result.central["accuracy"]
            rows.append({"partition": part, "strategy": strategy, "accuracy": round(result.final_accuracy, 4),
                         "best_accuracy": round(max(curve[1]), 4), "central_accuracy": round(result.central["accuracy"], 4),
                         "central_epochs": result.central["epochs"], "run_s": round(result.seconds, 1)})
            print(f"  {part:<20} {strategy:<8} final {rows[-1]['accuracy']:.4f} (central "
                  f"{rows[-1]['central_accuracy']:.4f})", flush=True)
    return rows, curves


def plot_panels(curves: dict, path: Path, title_suffix: str) -> None:
    """One figure per partition, stacked into a single PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.0 * len(curves), 3.8), dpi=110, sharey=True)
    for ax, (part, by_strategy) in zip(axes, curves.items()):
        for strategy, value in by_strategy.items():
            if strategy == "central":
                ax.axhline(value, linestyle="--", color="gray", label=f"central ({value:.3f})")
            else:
                ax.plot(*value, marker="o", markersize=2, label=strategy)
        ax.set(title=part, xlabel="round", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel(f"global test accuracy ({title_suffix})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_tables(scale: list[dict], accuracy: list[dict]) -> None:
    print("\nscale (Fashion-MNIST, 10% of clients per round, Dirichlet 0.5)")
    print(f"{'clients':>8}{'per round':>10}{'round s':>9}{'max s':>8}{'rounds/s':>10}{'peak RSS MB':>13}"
          f"{'peak PSS MB':>13}{'acc':>8}{'central':>9}")
    for r in scale:
        print(f"{r['clients']:>8}{r['per_round']:>10}{r['round_s_mean']:>9.2f}{r['round_s_max']:>8.2f}"
              f"{r['rounds_per_s']:>10.2f}{r['peak_rss_mb']:>13,.0f}{r['peak_pss_mb']:>13,.0f}"
              f"{r['accuracy']:>8.4f}{r['central_accuracy']:>9.4f}")
    if accuracy:
        print("\naccuracy (digits)")
        print(f"{'partition':<22}{'strategy':<10}{'final':>8}{'best':>8}{'central':>9}")
        for r in accuracy:
            print(f"{r['partition']:<22}{r['strategy']:<10}{r['accuracy']:>8.4f}{r['best_accuracy']:>8.4f}"
                  f"{r['central_accuracy']:>9.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-root", default=str(FASHION))
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--scale-rounds", type=int, default=5)
    parser.add_argument("--acc-clients", type=int, default=10)
    parser.add_argument("--acc-fraction", type=float, default=0.5)
    parser.add_argument("--acc-rounds", type=int, default=30)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--plot", default=str(REPO / "benchmarks/results/federated_accuracy.png"))
    args = parser.parse_args()
    start = time.perf_counter()
    # A wrong --fashion-root is named before Ray and the actor pool start (loaded once; the runs reuse it).
    load_data(load_config(REPO / "configs/federated_fashion.yaml", [f"data.root={args.fashion_root}"]).data, 0)
    init_ray(quiet=True)
    size = pool_size(requested=0, cpus=cluster_cpus(), memory_bytes=ray.available_resources().get("memory", 0),
                     actor_memory_gb=1.0, clients_per_round=100)
    pool = ActorPool(size, actor_memory_gb=1.0)
    pool.wait_ready()
    with tempfile.TemporaryDirectory(prefix="fed-bench-") as tmp:
        try:
            scale = [scale_row(c, args, pool, Path(tmp)) for c in args.clients]
            accuracy, curves = ([], {}) if args.skip_accuracy else accuracy_runs(args, pool, Path(tmp))
        finally:
            pool.shutdown()
    if curves:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_panels(curves, Path(args.plot), f"{args.acc_clients} clients, {args.acc_fraction:g} per round")
    print_tables(scale, accuracy)
    print(json.dumps({"benchmark": "federated_scale", "actors": size, "scale": scale, "accuracy": accuracy,
                      "plot": args.plot if curves else None, "seconds": round(time.perf_counter() - start, 1)}))
    return 0


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
