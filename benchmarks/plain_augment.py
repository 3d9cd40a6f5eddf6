"""What a plain PyTorch script pays for augmentation: per-sample torchvision RandomCrop(28, padding=2) +
RandomHorizontalFlip in a DataLoader (mlp128, Adam, batch 256, 1 thread), against engine.fit with the same
augmentation (e) and KD on 8 cached views (f), in one run, 3 passes.

    .venv/bin/python benchmarks/plain_augment.py
"""
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, "benchmarks")
from torchvision.transforms import v2
from raydistill.core.config import load_config
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, fit
from raydistill.core.models import build_model
from raydistill.core.config.schema import RecipeSection
from distill_throughput import AUGMENT, VIEWS, timed_views_fit, timed_fit, STUDENTS
from raydistill.core.views import ViewCache
torch.set_num_threads(1)
cfg = load_config("configs/fashion_mnist.yaml", ["data.root=../shared/datasets/fashion-mnist", "data.val_fraction=0.1", "run.quiet=true"])
b = load_data(cfg.data, 0)
x, y = torch.as_tensor(b.x_train), torch.as_tensor(b.y_train)
fill = float(-b.normalization["mean"][0] / b.normalization["std"][0])
class DS(torch.utils.data.Dataset):
    def __init__(s): s.t = v2.Compose([v2.RandomCrop(28, padding=2, fill=fill), v2.RandomHorizontalFlip()])
    def __len__(s): return len(y)
    def __getitem__(s, i): return s.t(x[i]), y[i]
def plain():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    s = time.perf_counter()
    for xb, yb in torch.utils.data.DataLoader(DS(), batch_size=256, shuffle=True):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xb), yb).backward()
        opt.step()
    return len(y) / (time.perf_counter() - s)
teacher = build_model("mlp", b.input_shape, 10, {"hidden": [1200, 1200]})
fit(teacher, b.x_train, b.y_train, epochs=1, lr=1e-3, batch_size=256)
teacher.eval()
views = ViewCache(views=VIEWS, spec=AUGMENT, fill=(0.0,), seed=0, num_classes=10)
with torch.no_grad():
    cache = views.build(teacher, x, torch.arange(len(y)), 10)
kd = KDSettings(temperature=4.0, alpha=0.5)
for r in range(3):
    p = plain()
    e = timed_fit(b, STUDENTS["mlp128"], threads=1, epochs=1, batch=256, recipe=RecipeSection(augment=AUGMENT))
    f = timed_views_fit(b, STUDENTS["mlp128"], views, cache, epochs=1, batch=256, kd=kd)
    torch.set_num_threads(1)
    print(f"pass {r+1}: plain torchvision script {p:,.0f}/s, (e) engine.fit augmented {e:,.0f}/s, (f) cached views KD {f:,.0f}/s, (f)/plain {f/p:.2f}x", flush=True)
