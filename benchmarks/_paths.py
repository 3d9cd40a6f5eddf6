"""Where the benchmarks find what they read: the repository and the real Fashion-MNIST files
(``../shared/datasets/fashion-mnist`` beside the checkout, on this machine and in CI)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FASHION = REPO.parent / "shared" / "datasets" / "fashion-mnist"
