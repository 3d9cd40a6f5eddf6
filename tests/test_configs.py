"""The shipped recipes (configs/*.yaml) load, pass the rules, and build their models for their data;
a recipe whose data is not on this machine fails preflight with an error that says how to fix it."""
from __future__ import annotations

from pathlib import Path

import pytest

from raydistill.core.config import load_config
from raydistill.core.data import DataError
from raydistill.core.models import build_model, count_parameters
from raydistill.core.preflight import preflight

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
FASHION = REPO.parent / "shared" / "datasets" / "fashion-mnist"  # on every machine the tests run on


def test_every_shipped_config_is_found():
    assert {p.name for p in CONFIGS} >= {"digits.yaml", "fashion_mnist.yaml", "mnist_hinton.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    cfg = load_config(str(path))
    assert cfg.distill.epochs > 0 and cfg.teacher.epochs > 0


def test_fashion_recipe_builds_its_pair_and_distils_online_with_the_same_flips():
    cfg = load_config(str(REPO / "configs" / "fashion_mnist.yaml"), [f"data.root={FASHION}"])
    bundle = preflight(cfg, "pipeline")
    assert bundle.input_shape == (1, 28, 28) and len(bundle.y_train) == 60_000  # val_fraction 0: all of it
    # online: the teacher labels the flipped batch the student sees; the baseline gets the same flips
    assert cfg.distill.mode == "online" and cfg.distill.augment.hflip and cfg.teacher.augment.hflip
    student = build_model(cfg.distill.student.name, bundle.input_shape, 10, cfg.distill.student.args)
    assert count_parameters(student) == (784 * 800 + 800) + (800 * 800 + 800) + (800 * 10 + 10)


def test_mnist_recipe_without_its_files_names_data_root(tmp_path):
    cfg = load_config(str(REPO / "configs" / "mnist_hinton.yaml"), [f"data.root={tmp_path}"])
    with pytest.raises(DataError, match="data.root"):
        preflight(cfg, "teacher")
