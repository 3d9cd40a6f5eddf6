"""Data registry, deterministic splits, normalization; model zoo shapes (no Ray)."""
import numpy as np
import pytest
import torch

from raydistill.core.config import DataSection, load_config
from raydistill.core.data import DataError, load_data
from raydistill.core.models import MODELS, build_model, count_parameters
from raydistill.core.preflight import preflight
from raydistill.core.registry import UnknownNameError


def test_digits_split_is_deterministic_disjoint_and_complete():
    a = load_data(DataSection(), seed=0)
    b = load_data(DataSection(), seed=0)
    c = load_data(DataSection(), seed=1)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    assert np.array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test)
    # disjoint: no test image appears in train (digits has few exact duplicates; compare row sets)
    train_rows = {r.tobytes() for r in a.x_train.reshape(len(a.x_train), -1)}
    overlap = sum(r.tobytes() in train_rows for r in a.x_test.reshape(len(a.x_test), -1))
    assert overlap <= 3
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10


def test_normalization_is_recorded_and_applied():
    bundle = load_data(DataSection(), seed=0)
    assert np.allclose(bundle.x_train.mean(), 0.0, atol=1e-4)
    assert np.allclose(bundle.x_train.std(), 1.0, atol=1e-3)
    assert 4.0 < bundle.normalization["mean"][0] < 6.0  # raw digits pixels are 0..16


def test_fashion_mnist_reads_real_idx_files(fashion_root):
    bundle = load_data(DataSection(name="fashion_mnist", root=str(fashion_root)), seed=0)
    assert bundle.input_shape == (1, 28, 28)
    assert len(bundle.y_test) == 10_000
    assert len(bundle.y_train) + len(bundle.y_val) == 60_000
    assert bundle.class_names[9] == "Ankle boot"
    assert 60 < bundle.normalization["mean"][0] < 90  # raw pixels 0..255


def test_missing_data_set_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_data(DataSection(name="mnist", root=str(tmp_path)), seed=0)
    assert str(tmp_path) in str(err.value) and "data.download=true" in str(err.value)


def test_preflight_turns_a_missing_data_set_into_an_error_before_ray(tmp_path):
    cfg = load_config(None, ["data.name=fashion_mnist", f"data.root={tmp_path}"])
    with pytest.raises(DataError):
        preflight(cfg, "teacher")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown model 'resnet18x'; known: .*mlp"):
        MODELS.get("resnet18x")


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_small", "seed_teacher", "seed_student", "resnet18", "mobilenet_v3_small"])
def test_every_model_fits_every_input_size(name, shape):
    model = build_model(name, shape, 10, {"hidden": [32]} if name == "mlp" else None).eval()
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)


def test_seed_pair_matches_the_paper_layout():
    teacher = build_model("seed_teacher", (3, 32, 32), 10)
    student = build_model("seed_student", (3, 32, 32), 10)
    convs = [m.out_channels for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m.out_features for m in teacher.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [64, 128] and fcs == [512, 10]
    assert [m.out_channels for m in student.modules() if isinstance(m, torch.nn.Conv2d)] == [32, 64]
    assert count_parameters(student) < count_parameters(teacher) / 4


@pytest.mark.parametrize("channels, fc, shape", [((32, 64), 128, (1, 28, 28)), ((8, 16), 24, (3, 32, 32))])
def test_cnn_parameter_count_matches_the_written_formula(channels, fc, shape):
    c, h, w = shape
    c0, c1 = channels
    expected = (9 * c * c0 + c0) + (9 * c0 * c1 + c1) + (c1 * (h // 4) * (w // 4) + 1) * fc + (fc + 1) * 10
    model = build_model("cnn", shape, 10, {"channels": list(channels), "fc": fc})
    assert count_parameters(model) == expected


def test_bad_model_arguments_are_reported():
    with pytest.raises(ValueError, match="model 'mlp': bad arguments"):
        build_model("mlp", (1, 8, 8), 10, {"widths": [3]})
