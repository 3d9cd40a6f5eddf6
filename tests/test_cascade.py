"""The confidence cascade's decisions (serving/cascade.py), against hand-computed numbers. No Ray."""
from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from raydistill.core.artifacts import ArtifactError
from raydistill.core.config import ConfigError, load_config
from raydistill.serving.cascade import CascadeSettings, check_pair, confidence, escalated, merge

from conftest import REPO

P = np.array([[0.70, 0.20, 0.10],   # max 0.70, margin 0.50
              [0.40, 0.35, 0.25],   # max 0.40, margin 0.05
              [0.10, 0.45, 0.45],   # max 0.45, margin 0.00 (a tie)
              [0.05, 0.05, 0.90]])  # max 0.90, margin 0.85


def test_confidence_is_the_largest_probability_or_the_gap_to_the_second():
    np.testing.assert_allclose(confidence(P, "max_prob"), [0.70, 0.40, 0.45, 0.90])
    np.testing.assert_allclose(confidence(P, "margin"), [0.50, 0.05, 0.00, 0.85], atol=1e-12)
    with pytest.raises(ValueError, match="max_prob, margin"):
        confidence(P, "entropy")


@pytest.mark.parametrize("metric, threshold, expected", [
    ("max_prob", 0.5, [False, True, True, False]),
    ("max_prob", 0.0, [False] * 4),  # 0: never
    ("max_prob", 1.01, [True] * 4),  # above 1: always
    ("margin", 0.45, [False, True, True, False]),
    ("margin", 0.04, [False, False, True, False]),
])
def test_instances_below_the_threshold_go_to_the_teacher(metric, threshold, expected):
    settings = CascadeSettings(cascade_metric=metric, cascade_threshold=threshold)
    assert escalated(P, settings).tolist() == expected


def test_merge_takes_the_teachers_rows_for_escalated_instances_and_marks_failures():
    mask = np.array([False, True, True, False])
    teacher = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # answers for rows 1 and 2, in order
    probs, notes = merge(P, teacher, mask)
    np.testing.assert_array_equal(probs, [P[0], teacher[0], teacher[1], P[3]])
    assert notes == [{"answered_by": "student"}, {"answered_by": "teacher"}, {"answered_by": "teacher"},
                     {"answered_by": "student"}]
    probs, notes = merge(P, None, mask)  # the teacher did not answer
    np.testing.assert_array_equal(probs, P)
    assert notes == [{"answered_by": "student"}, {"answered_by": "student", "escalation": "failed"},
                     {"answered_by": "student", "escalation": "failed"}, {"answered_by": "student"}]


def test_a_teacher_for_other_classes_or_inputs_is_refused_naming_both():
    student = {"class_names": ["a", "b"], "input_shape": [1, 8, 8]}
    check_pair(student, dict(student), student="s1", other="t1")
    with pytest.raises(ArtifactError, match=r"teacher t1 has class list \['a', 'c'\], but student s1 has \['a', 'b'\]"):
        check_pair(student, {**student, "class_names": ["a", "c"]}, student="s1", other="t1")
    with pytest.raises(ArtifactError, match=r"teacher t1 has input shape \[3, 8, 8\]"):
        check_pair(student, {**student, "input_shape": [3, 8, 8]}, student="s1", other="t1")


@pytest.mark.parametrize("sets, message", [
    (["serve.cascade_metric=entropy"], "serve.cascade_metric: must be one of max_prob, margin"),
    (["serve.cascade_threshold=-0.1"], "serve.cascade_threshold: must be >= 0"),
    (["serve.cascade_timeout_s=0"], "serve.cascade_timeout_s: must be > 0"),
    (["serve.cascade_min_replicas=2", "serve.cascade_max_replicas=1"], "serve.cascade_min_replicas"),
    (["serve.cascade_threshold=.nan"], "serve.cascade_threshold"),
])
def test_cascade_settings_that_cannot_work_are_config_errors(sets, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, sets)


def test_run_time_cascade_settings_refuse_what_the_config_refuses():
    with pytest.raises(ValidationError):
        CascadeSettings(cascade_threshold=float("nan"))
    with pytest.raises(ValidationError):
        CascadeSettings(cascade_metric="entropy")
    with pytest.raises(ValidationError):
        CascadeSettings(cascade_timeout_s=0)


def test_the_report_measures_the_split_asked_for_as_raw_pixels_and_refuses_an_empty_validation_split():
    from raydistill.core.data import DataBundle
    from raydistill.serving.cascade_report import split_examples

    rng = np.random.default_rng(0)
    x_val, x_test = rng.normal(size=(5, 2, 3, 3)).astype(np.float32), rng.normal(size=(4, 2, 3, 3)).astype(np.float32)
    norm = {"mean": [10.0, 20.0], "std": [2.0, 4.0]}
    bundle = DataBundle("toy", x_val[:1], np.zeros(1, int), x_val, np.arange(5), x_test, np.arange(4), ["a", "b"], norm)
    x, y = split_examples(bundle, "val")
    np.testing.assert_allclose(x[:, 1], x_val[:, 1] * 4.0 + 20.0, rtol=1e-6)  # x * std_c + mean_c
    assert list(y) == [0, 1, 2, 3, 4]
    x, y = split_examples(bundle, "test")
    np.testing.assert_allclose(x[:, 0], x_test[:, 0] * 2.0 + 10.0, rtol=1e-6)
    assert list(y) == [0, 1, 2, 3]
    empty = DataBundle("toy", x_val, np.zeros(5, int), x_val[:0], np.zeros(0, int), x_test, np.arange(4), ["a", "b"], norm)
    with pytest.raises(ConfigError, match=r"--split val: .*data.val_fraction is 0"):
        split_examples(empty, "val")


def test_cascade_report_on_an_empty_validation_split_is_a_clear_error_before_anything_starts(tmp_path, capsys):
    from raydistill.cli.commands import main

    rc = main(["cascade-report", "--config", str(REPO / "configs" / "digits.yaml"), "--split", "val",
               "--set", "data.val_fraction=0", "--set", "pipeline.tune=false", "--set", f"run.storage_path={tmp_path}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--split val" in err and "data.val_fraction" in err and "Traceback" not in err
    assert not (tmp_path / "cascade").exists()


@pytest.mark.parametrize("target", ["96.8", "-5", "nan"])
def test_cascade_report_target_accuracy_outside_zero_one_is_refused_before_anything_starts(target, tmp_path, capsys):
    # Found by review: a percent (96.8) made every threshold miss the target, so the report said the
    # cascade "does not pay"; -5 recommended the student alone. Checked before Ray or the data.
    from raydistill.cli.commands import main

    rc = main(["cascade-report", "--config", str(REPO / "configs" / "digits.yaml"), "--target-accuracy", target,
               "--set", f"run.storage_path={tmp_path}"])
    assert rc == 2 and "--target-accuracy: an accuracy in [0, 1] (0.968, not 96.8)" in capsys.readouterr().err
    assert not (tmp_path / "cascade").exists()
