"""Data set registry, deterministic splits and normalization. No Ray here.

Every loader returns raw pixels ``x`` of shape ``(N, C, H, W)`` (float32) and labels ``y`` of
shape ``(N,)`` (int64). :func:`load_data` splits them by seed, normalizes with the training
split's per-channel mean/std (recorded in the model card so that a server can apply the same
transform to raw inputs) and returns a :class:`DataBundle`.
"""
from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path
from typing import Callable

import numpy as np

from .registry import Registry

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


class DataError(FileNotFoundError):
    """A data set is missing or malformed; the message says where we looked and how to get it."""


@dataclass
class RawData:
    """Raw pixels and labels as the data set ships them, before splitting."""

    x_train: np.ndarray  # (N, C, H, W) float32, raw pixel units
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    class_names: list[str]


@dataclass
class DataBundle:
    """Normalized splits plus what a model card needs to reproduce the transform."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    normalization: dict  # {"mean": [C floats], "std": [C floats]} in raw pixel units

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x_train.shape[1:])  # (C, H, W)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        return {"name": self.name, "train": len(self.y_train), "val": len(self.y_val),
                "test": len(self.y_test), "input_shape": list(self.input_shape),
                "num_classes": self.num_classes}


DATASETS: Registry[Callable[..., RawData]] = Registry("data set")


@DATASETS.register("digits")
def _load_digits(section) -> RawData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8), values 0..16
    return RawData(x, digits.target.astype(np.int64), None, None, [str(i) for i in range(10)])


@DATASETS.register("synthetic")
def _load_synthetic(section) -> RawData:
    """Gaussian blobs in pixel space: class k has mean pattern m_k, noise sigma=1."""
    rng = np.random.default_rng(1234)
    c, h, w = section.synthetic_shape
    k = section.synthetic_classes
    centers = rng.normal(0.0, 2.0, size=(k, c, h, w)).astype(np.float32)
    y = rng.integers(0, k, size=section.synthetic_samples).astype(np.int64)
    x = centers[y] + rng.normal(0.0, 1.0, size=(len(y), c, h, w)).astype(np.float32)
    return RawData(x, y, None, None, [f"class_{i}" for i in range(k)])


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes with ``ndim`` dimensions: magic
    ``00 00 08 ndim``, ``ndim`` big-endian uint32 sizes, then ``prod(sizes)`` bytes. A truncated,
    damaged or mislabelled file is a DataError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut .gz ends in EOFError
        raise DataError(f"{path} cannot be read ({type(exc).__name__}: {exc}); download it again") from exc
    header = 4 + 4 * ndim
    if len(data) < header or data[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(f"{path} is not an IDX file of {ndim}-dimensional unsigned bytes (header "
                        f"{data[:4].hex() or 'empty'}, expected 000008{ndim:02x}); download it again")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) - header != int(np.prod(dims)):
        raise DataError(f"{path} is truncated or damaged: its header promises {' x '.join(map(str, dims))} = "
                        f"{int(np.prod(dims))} bytes, it holds {len(data) - header}; download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W)`` and labels ``(N,)`` that belong together (same N)."""
    x, y = _read_idx(images, 3), _read_idx(labels, 1)
    if len(x) != len(y):
        raise DataError(f"{images.name} holds {len(x)} images but {labels.name} {len(y)} labels: the files are "
                        f"from different splits or data sets ({images.parent})")
    return x, y


def _idx_candidates(root: Path, torchvision_folder: str) -> list[Path]:
    return [root, root / torchvision_folder / "raw"]


def _find_idx(root: Path, folder: str, stem: str) -> Path | None:
    for base in _idx_candidates(root, folder):
        for name in (f"{stem}.gz", stem):
            if (base / name).is_file():
                return base / name
    return None


def _default_root(name: str) -> Path:
    base = os.environ.get("RAYDISTILL_DATA_ROOT", os.path.expanduser("~/.cache/raydistill/data"))
    return Path(base) / name.replace("_", "-")


def _idx_loader(name: str, tv_folder: str, tv_class: str, class_names: list[str]):
    def load(section) -> RawData:
        root = Path(section.root).expanduser() if section.root else _default_root(name)
        if section.download:
            import torchvision

            getattr(torchvision.datasets, tv_class)(str(root), train=True, download=True)
            getattr(torchvision.datasets, tv_class)(str(root), train=False, download=True)
        stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        paths = [_find_idx(root, tv_folder, s) for s in stems]
        if any(p is None for p in paths):
            missing = [s for s, p in zip(stems, paths) if p is None]
            looked = ", ".join(str(p) for p in _idx_candidates(root, tv_folder))
            raise DataError(
                f"data set '{name}' not found: missing {', '.join(missing)} (.gz) in {looked}. "
                f"Set data.root to a folder holding the IDX files, or data.download=true "
                f"to fetch them with torchvision.")
        (xtr, ytr), (xte, yte) = _read_idx_pair(paths[0], paths[1]), _read_idx_pair(paths[2], paths[3])
        for labels, path in ((ytr, paths[1]), (yte, paths[3])):
            if len(labels) and int(labels.max()) >= len(class_names):
                raise DataError(f"{path} holds label {int(labels.max())}, but '{name}' has {len(class_names)} "
                                f"classes (0..{len(class_names) - 1}): not this data set's labels")
        return RawData(xtr.astype(np.float32)[:, None], ytr.astype(np.int64),
                       xte.astype(np.float32)[:, None], yte.astype(np.int64), class_names)

    return load


def _cifar_loader(name: str, tv_class: str):
    def load(section) -> RawData:
        import torchvision

        root = Path(section.root).expanduser() if section.root else _default_root(name)
        try:
            train = getattr(torchvision.datasets, tv_class)(str(root), train=True, download=section.download)
            test = getattr(torchvision.datasets, tv_class)(str(root), train=False, download=section.download)
        except RuntimeError as exc:
            raise DataError(f"data set '{name}' not found under {root} ({exc}). Set data.root to the "
                            f"folder holding the torchvision files, or data.download=true.") from exc
        to_x = lambda d: np.asarray(d.data, dtype=np.float32).transpose(0, 3, 1, 2)  # noqa: E731
        return RawData(to_x(train), np.asarray(train.targets, np.int64), to_x(test),
                       np.asarray(test.targets, np.int64), list(train.classes))

    return load


DATASETS.register("fashion_mnist", _idx_loader("fashion_mnist", "FashionMNIST", "FashionMNIST", FASHION_CLASSES))
DATASETS.register("mnist", _idx_loader("mnist", "MNIST", "MNIST", [str(i) for i in range(10)]))
DATASETS.register("cifar10", _cifar_loader("cifar10", "CIFAR10"))
DATASETS.register("cifar100", _cifar_loader("cifar100", "CIFAR100"))


def split_indices(n: int, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Seeded permutation of ``range(n)`` cut into consecutive parts of the given fractions;
    the remainder is the last part."""
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions])
    return np.split(perm, cuts)


def compute_normalization(x: np.ndarray) -> dict:
    """Per-channel mean and std over ``(N, H, W)`` of ``x`` ``(N, C, H, W)``; std floored at 1e-6."""
    mean = x.mean(axis=(0, 2, 3))
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-6)
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def normalize(x: np.ndarray, norm: dict) -> np.ndarray:
    """``(x - mean_c) / std_c`` per channel; ``x`` is ``(N, C, H, W)`` raw pixels."""
    mean = np.asarray(norm["mean"], np.float32)[None, :, None, None]
    std = np.asarray(norm["std"], np.float32)[None, :, None, None]
    return ((np.asarray(x, np.float32) - mean) / std).astype(np.float32)


def load_data(section, seed: int) -> DataBundle:
    """Load ``section.name`` and split it deterministically by ``seed``.

    Sets without an official test split get ``test_fraction`` of the data as test; the
    validation split is always ``val_fraction`` of what remains for training.
    """
    return _load_data_cached(section.name, section.root, section.download, section.val_fraction,
                             section.test_fraction, section.train_limit, section.synthetic_samples,
                             section.synthetic_classes, tuple(section.synthetic_shape), seed)


@functools.lru_cache(maxsize=4)
def _load_data_cached(name, root, download, val_fraction, test_fraction, train_limit,
                      synthetic_samples, synthetic_classes, synthetic_shape, seed) -> DataBundle:
    section = SimpleNamespace(name=name, root=root, download=download, val_fraction=val_fraction,
                          test_fraction=test_fraction, train_limit=train_limit,
                          synthetic_samples=synthetic_samples, synthetic_classes=synthetic_classes,
                          synthetic_shape=list(synthetic_shape))
    raw = DATASETS.get(name)(section)
    x, y = raw.x_train, raw.y_train
    if raw.x_test is None:
        test_idx, rest = split_indices(len(y), [test_fraction], seed)
        x_test, y_test, x, y = x[test_idx], y[test_idx], x[rest], y[rest]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    val_idx, train_idx = split_indices(len(y), [val_fraction], seed + 1)
    if train_limit:
        train_idx = train_idx[:train_limit]
    norm = compute_normalization(x[train_idx])
    return DataBundle(name=name, x_train=normalize(x[train_idx], norm), y_train=y[train_idx],
                      x_val=normalize(x[val_idx], norm), y_val=y[val_idx],
                      x_test=normalize(x_test, norm), y_test=y_test.astype(np.int64),
                      class_names=raw.class_names, normalization=norm)
