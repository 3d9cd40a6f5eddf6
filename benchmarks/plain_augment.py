"""What a plain PyTorch script pays for augmentation: per-sample torchvision RandomCrop(28, padding=2) +
RandomHorizontalFlip in a DataLoader (mlp128, Adam, batch 256, 1 thread), against engine.fit with the same
augmentation (e) and KD on 8 cached views (f), in one run, 3 passes (samples/s of one epoch each).

    .venv/bin/python benchmarks/plain_augment.py [--passes 3] [--fashion-root DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import FASHION  # noqa: E402
from distill_throughput import AUGMENT, STUDENTS, VIEWS, timed_fit, timed_views_fit  # noqa: E402

from raydistill.core.config import ConfigError, load_config  # noqa: E402
from raydistill.core.config.schema import RecipeSection  # noqa: E402
from raydistill.core.data import load_data  # noqa: E402
from raydistill.core.engine import KDSettings, fit, teacher_view_cache  # noqa: E402
from raydistill.core.models import build_model  # noqa: E402
from raydistill.core.recipe import raw_zero_fill  # noqa: E402
from raydistill.core.views import ViewCache  # noqa: E402

BATCH = 256


class AugmentedImages(torch.utils.data.Dataset):
    """``(x[i], y[i])`` with a fresh torchvision crop (padding 2, raw-zero fill) and flip per access."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, fill: float):
        self.x, self.y = x, y
        self.transform = v2.Compose([v2.RandomCrop(28, padding=2, fill=fill), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(self.x[i]), self.y[i]


def plain_epoch(images: AugmentedImages) -> float:
    """Samples/s of one epoch of the script a user would write: 784-128-10 MLP, Adam 1e-3, CE."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    start = time.perf_counter()
    for xb, yb in torch.utils.data.DataLoader(images, batch_size=BATCH, shuffle=True):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fashion-root", default=str(FASHION))
    parser.add_argument("--passes", type=int, default=3, help="epochs timed per row (the table reports each)")
    args = parser.parse_args()
    if args.passes < 1:
        raise ConfigError(f"--passes must be >= 1, got {args.passes}")
    torch.set_num_threads(1)
    cfg = load_config("configs/fashion_mnist.yaml", [f"data.root={args.fashion_root}",
                                                     "data.val_fraction=0.1", "run.quiet=true"])
    bundle = load_data(cfg.data, 0)
    x, y = torch.as_tensor(bundle.x_train), torch.as_tensor(bundle.y_train)
    fill = raw_zero_fill(bundle.normalization, bundle.input_shape[0])
    images = AugmentedImages(x, y, fill[0])
    # any teacher serves for throughput: one epoch of an MLP, its logits cached on VIEWS views once
    teacher = build_model("mlp", bundle.input_shape, bundle.num_classes, {"hidden": [1200, 1200]})
    fit(teacher, bundle.x_train, bundle.y_train, epochs=1, lr=1e-3, batch_size=BATCH)
    views = ViewCache(views=VIEWS, spec=AUGMENT, fill=fill, seed=0, num_classes=bundle.num_classes)
    cache = teacher_view_cache(views, [teacher], x, torch.arange(len(y)), bundle.num_classes)
    kd = KDSettings(temperature=4.0, alpha=0.5)
    for r in range(args.passes):
        p = plain_epoch(images)
        e = timed_fit(bundle, STUDENTS["mlp128"], threads=1, epochs=1, batch=BATCH, recipe=RecipeSection(augment=AUGMENT))
        f = timed_views_fit(bundle, STUDENTS["mlp128"], views, cache, epochs=1, batch=BATCH, kd=kd)
        torch.set_num_threads(1)
        print(f"pass {r + 1}: plain torchvision script {p:,.0f}/s, (e) engine.fit augmented {e:,.0f}/s, "
              f"(f) cached views KD {f:,.0f}/s, (f)/plain {f / p:.2f}x", flush=True)


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
