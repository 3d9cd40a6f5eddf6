"""The ceiling for (d) in distill_throughput.py, without Ray: plain ``torch.distributed`` DDP
(gloo, N processes, 1 thread each) against one process with N threads, same student, data, batch
per process and cached-KD loss. If DDP itself cannot reach 0.9x here, Ray Train cannot either.
Also prints the time of one gloo all-reduce of the student's gradient, the fixed cost DDP adds to
every step (on this VM ~1-2 ms even for a few kB: many round trips between two processes).

    .venv/bin/python benchmarks/ddp_ceiling.py [--student mlp128|cnn_small] [--epochs 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raydistill.core.config import load_config
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, iterate_batches, make_optimizer, train_epoch
from raydistill.core.models import build_model
from raydistill.runtime import free_local_port

from _paths import FASHION
from distill_throughput import STUDENTS


def _train(rank: int, world: int, threads: int, student: str, epochs: int, batch: int, port: int, out) -> None:
    """Train on this rank's slice; rank 0 puts the median steady-state samples/s of all ranks."""
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = load_config(None, ["data.name=fashion_mnist", f"data.root={FASHION}"])
    bundle = load_data(cfg.data, 0)
    x, y = torch.as_tensor(bundle.x_train[rank::world]), torch.as_tensor(bundle.y_train[rank::world])
    logits = torch.randn(len(y), bundle.num_classes)  # stands in for cached teacher logits
    name, args = STUDENTS[student]
    torch.manual_seed(0)
    model = build_model(name, bundle.input_shape, bundle.num_classes, args)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = make_optimizer(model, 1e-3)
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        train_epoch(model, iterate_batches([x, y, logits], batch, shuffle=True, seed=epoch), optimizer,
                    kd=KDSettings(temperature=4.0, alpha=0.1))
        times.append(time.perf_counter() - start)
    allreduce_ms = _allreduce_ms(sum(p.numel() for p in model.parameters())) if world > 1 else None
    if rank == 0:
        out.put((world * len(y) / float(np.median(times[1:])), allreduce_ms))
    if world > 1:
        dist.destroy_process_group()


def _allreduce_ms(numel: int, calls: int = 200) -> float:
    """Milliseconds per gloo all-reduce of a float32 tensor the size of the model's gradient."""
    grads = torch.zeros(numel)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        dist.all_reduce(grads)
    return (time.perf_counter() - start) / calls * 1e3


def measure(world: int, threads: int, args) -> tuple[float, float | None]:
    """(samples/s, ms per gradient all-reduce or None for one process)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_train, args=(r, world, threads, args.student, args.epochs, args.batch, args.port,
                                              out)) for r in range(world)]
    for p in procs:
        p.start()
    result = out.get(timeout=1800)
    for p in procs:
        p.join(60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student", choices=list(STUDENTS), default="mlp128")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    args.port = free_local_port()
    (one, _), (two_threads, _), (ddp, allreduce_ms) = (measure(1, 1, args), measure(1, 2, args), measure(2, 1, args))
    rows = {"1 process, 1 thread": one, "1 process, 2 threads": two_threads, "DDP 2 processes x 1 thread (gloo, no Ray)": ddp}
    print(f"\n{args.student}, Fashion-MNIST, cached-KD loss, batch {args.batch}/process")
    print(f"{'configuration':<44}{'samples/s':>12}{'vs 2 threads':>14}")
    for name, rate in rows.items():
        print(f"{name:<44}{rate:>12,.0f}{rate / two_threads:>13.2f}x")
    print(f"one 1-thread step of {args.batch}: {args.batch / one * 1e3:.2f} ms; one gloo all-reduce of the "
          f"gradient (what DDP adds to every step): {allreduce_ms:.2f} ms")


if __name__ == "__main__":
    main()
