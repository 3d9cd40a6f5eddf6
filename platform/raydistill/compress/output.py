"""Writing a compression report: CSV, Markdown table and the accuracy/size/latency plot."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

COLUMNS = ("name", "method", "accuracy", "parameters", "size_bytes")


def _latency_keys(rows: Sequence) -> list[str]:
    return sorted({k for r in rows for k in r.latency_ms}, key=int)


def write_csv(rows: Sequence, path: Path) -> None:
    """One line per row: the table's columns, ``latency_b<batch>_ms`` per batch size, format, file, note."""
    batches = _latency_keys(rows)
    header = [*COLUMNS, *(f"latency_b{b}_ms" for b in batches), "format", "file", "note"]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in rows:
            writer.writerow([r.name, r.method, f"{r.accuracy:.6f}", r.parameters, r.size_bytes,
                             *(f"{r.latency_ms[b]:.4f}" for b in batches), r.format, r.file, r.note])


def _size(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024**2 else f"{n / 1024**2:,.2f} MiB"


def markdown_table(rows: Sequence) -> str:
    """The printed/README table; sizes in KiB/MiB, latency in ms."""
    batches = _latency_keys(rows)
    head = ["model", "method", "test acc", "params", "size on disk", *(f"latency b={b} (ms)" for b in batches)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.name, r.method, f"{r.accuracy:.4f}", f"{r.parameters:,}", _size(r.size_bytes),
                 *(f"{r.latency_ms[b]:.3f}" for b in batches)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(rows: Sequence, path: Path, *, title: str) -> None:
    """Accuracy vs size on disk (log x); marker area ~ latency at the largest batch, colour ~
    latency at the smallest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = _latency_keys(rows)
    small, large = batches[0], batches[-1]
    sizes = [r.size_bytes / 1024 for r in rows]
    big = [r.latency_ms[large] for r in rows]
    area = [60 + 600 * v / max(max(big), 1e-9) for v in big]
    fig, ax = plt.subplots(figsize=(8, 5))
    points = ax.scatter(sizes, [r.accuracy for r in rows], s=area, c=[r.latency_ms[small] for r in rows],
                        cmap="viridis", alpha=0.8, edgecolors="black")
    for i, (r, x) in enumerate(zip(rows, sizes)):  # stagger labels: rows often share a size or accuracy
        ax.annotate(r.name, (x, r.accuracy), textcoords="offset points", xytext=(8, (8, -14, 20, -26)[i % 4]),
                    fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.12)  # room for the labels inside the axes
    ax.set_xlabel("size on disk (KiB, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title}\nmarker area ~ latency at batch {large}")
    fig.colorbar(points, ax=ax, label=f"latency at batch {small} (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
