"""What channels-last buys a conv teacher's passes that build cached soft targets, on this CPU.

The Fashion-MNIST config's teacher (``cnn`` 32/64, fc 128; its initial weights: the time does not
depend on them) on the first ``--images`` training images, two ways in each of ``--rounds``
interleaved rounds:

* default layout (``views.build`` / a batched forward with the teacher as built, what the cache
  paths did before 2026-12-07) against
* ``core.engine.teacher_view_cache`` / ``teacher_logits`` (conv weights channels-last on a CPU,
  handed back as they were),

for the ``--views`` seeded flips + ±2 px views of ``distill.cached_views`` and for the clean images
(``distill.mode=cached``). One untimed warm-up pass of each way first; the order alternates from
round to round. Prints each round, the median seconds, the ratio and the largest difference between
the two ways' logits (the view cache decoded from its fp16 storage). Usage:
    .venv/bin/python benchmarks/teacher_layout.py [--images 10000] [--views 8] [--threads 2] [--rounds 3]
        [--fashion-root ../shared/datasets/fashion-mnist]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _paths import FASHION
from raydistill.core.config import ConfigError, load_config
from raydistill.core.config.schema import AugmentSpec
from raydistill.core.data import load_data
from raydistill.core.engine import run_teachers, teacher_logits, teacher_view_cache
from raydistill.core.models import build_model
from raydistill.core.recipe import raw_zero_fill
from raydistill.core.topk import decode_topk
from raydistill.core.views import ViewCache

SPEC = AugmentSpec(hflip=True, translate=2)


def timed(fn):
    """``(seconds, fn())``."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@torch.no_grad()
def views_default(teacher, views: ViewCache, x: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
    """The view cache with the teacher in its default (contiguous) layout."""
    return views.build(lambda xv: run_teachers([teacher], xv), x, idx, views.num_classes)


@torch.no_grad()
def clean_default(teacher, x: torch.Tensor) -> torch.Tensor:
    """The clean logits ``(N, C)`` with the teacher in its default layout, 1,024 images at a time."""
    return torch.cat([teacher(x[i:i + 1024]) for i in range(0, len(x), 1024)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fashion-root", default=str(FASHION))
    args = parser.parse_args()
    for flag, value in (("--images", args.images), ("--views", args.views), ("--threads", args.threads),
                        ("--rounds", args.rounds)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    torch.set_num_threads(args.threads)
    cfg = load_config("configs/fashion_mnist.yaml", [f"data.root={args.fashion_root}", "run.quiet=true"])
    bundle = load_data(cfg.data, 0)
    x = torch.as_tensor(bundle.x_train[:args.images])
    idx = torch.arange(len(x))
    torch.manual_seed(0)
    spec = cfg.teacher.model
    teacher = build_model(spec.name, bundle.input_shape, bundle.num_classes, spec.args).eval()
    views = ViewCache(views=args.views, spec=SPEC, fill=raw_zero_fill(bundle.normalization, bundle.input_shape[0]),
                      seed=0, num_classes=bundle.num_classes)
    times = {name: [] for name in ("views default", "views channels-last", "clean default", "clean channels-last")}
    print(f"teacher {spec.name} {spec.args}, {len(x)} images, {args.views} views (flips, ±2 px), "
          f"{args.threads} threads, torch {torch.__version__}")
    runs = {"views default": lambda n: views_default(teacher, views, x[:n], idx[:n]),
            "views channels-last": lambda n: teacher_view_cache(views, [teacher], x[:n], idx[:n], bundle.num_classes),
            "clean default": lambda n: clean_default(teacher, x[:n]),
            "clean channels-last": lambda n: teacher_logits([teacher], x[:n])}
    for run in runs.values():  # warm-up: oneDNN picks and caches its kernels on a first call
        run(min(len(x), 1024))
    for r in range(args.rounds):
        out = {}
        for name in sorted(runs, key=lambda k: ("channels-last" in k) == (r % 2 == 0)):  # alternate who goes first
            seconds, out[name] = timed(lambda: runs[name](len(x)))
            times[name].append(seconds)
        old, new = (decode_topk(*out[f"views {w}"], bundle.num_classes) for w in ("default", "channels-last"))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
              + f"; largest logit difference: view cache {float((old - new).abs().max()):.1e} (fp16), clean "
              f"{float((out['clean default'] - out['clean channels-last']).abs().max()):.1e}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'teacher pass':<14}{'default s':>11}{'channels-last s':>17}{'speed-up':>10}   (median of {args.rounds})")
    for what in ("views", "clean"):
        old, new = med[f"{what} default"], med[f"{what} channels-last"]
        print(f"{what:<14}{old:>11.2f}{new:>17.2f}{old / new:>9.2f}x")


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
