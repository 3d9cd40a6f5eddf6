"""Where PyTorch's CPU softmax over the class axis is faster on the (C, B) transpose: the measurement
behind ``core.losses.class_major``.

For each batch B and class count C, ``log_softmax`` of a (B, C) float32 tensor along its classes
row-major (``dim=-1``) against the same on its contiguous transpose (``dim=0``, the copy included),
best of 7 x 300 calls, 1 thread, and the layout ``class_major`` picks. Set ``ATEN_CPU_CAPABILITY``
(``avx2``, ``default``) to see another kernel set on the same machine. Usage:
    .venv/bin/python benchmarks/softmax_layout.py [--batches 128 256 1024] [--classes 2 8 10 15 16 32 100]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from raydistill.core.losses import class_major


def best_us(fn, calls: int = 300, rounds: int = 7) -> float:
    """Best mean time per call in microseconds over ``rounds`` of ``calls`` calls."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256, 1024])
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 8, 10, 15, 16, 20, 32, 100])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, 1 thread")
    print(f"{'B':>6}{'C':>6}{'row-major us':>14}{'class-major us':>16}{'faster':>14}{'class_major':>13}")
    for b in args.batches:
        for c in args.classes:
            z = torch.randn(b, c)
            row = best_us(lambda: F.log_softmax(z, dim=-1))
            col = best_us(lambda: F.log_softmax(z.t().contiguous(), dim=0))
            print(f"{b:>6}{c:>6}{row:>14.1f}{col:>16.1f}{'class-major' if col < row else 'row-major':>14}"
                  f"{str(class_major(z)):>13}")


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
