"""`raydistill compress-report`: every row's numbers are re-derivable from the files it saved
(accuracy by an independent evaluation, size by os.path.getsize), plus the compression methods."""
import csv
import json
import os

import pytest
import torch

from raydistill.core.artifacts import load_card, load_state, new_artifact_path, save_artifact
from raydistill.cli.commands import main
from raydistill.compress.report import load_row_model
from raydistill.compress.methods import (latency_ms, load_sparse_state, make_permanent, nonzero_parameters,
                                         prune_global_l1, save_sparse, weight_sparsity)
from raydistill.core.models import quantize_int8
from raydistill.core.config import DataSection
from raydistill.core.data import load_data
from raydistill.core.engine import evaluate
from raydistill.core.models import build_model

from conftest import REPO

DIGITS = str(REPO / "configs" / "digits.yaml")
ROWS = ["teacher", "student-alone", "distilled-student", "teacher-int8", "distilled-student-int8",
        "teacher-pruned50", "teacher-pruned90"]


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSection(), 0)


def _tiny(storage, *extra):
    sets = [f"run.storage_path={storage}", "distill.epochs=3", "compress.finetune_epochs=1",
            "compress.latency_repeats=3", *extra]
    return [a for s in sets for a in ("--set", s)]


def _report_dir(storage):
    (found,) = list((storage / "reports").iterdir())
    return found


def test_report_rows_match_independent_evaluation_and_real_file_sizes(local_teacher, storage, digits, capsys):
    # Execute: the README command with tiny epochs.
    rc = main(["compress-report", "--config", DIGITS, "--artifact", str(local_teacher), *_tiny(storage)])
    out = capsys.readouterr().out
    report = _report_dir(storage)
    meta = json.loads((report / "report.json").read_text())
    # Assert: every row, re-loaded from its own file, evaluates to the reported accuracy.
    assert rc == 0 and [r["name"] for r in meta["rows"]] == ROWS
    for row in meta["rows"]:
        model = load_row_model(report, row["name"])
        assert evaluate(model, digits.x_test, digits.y_test)["accuracy"] == row["accuracy"], row["name"]
        assert os.path.getsize(row["file"]) == row["size_bytes"], row["name"]
        assert row["name"] in out and all(v > 0 for v in row["latency_ms"].values())
        assert set(row["latency_ms"]) == {"1", "64"}
    rows = {r["name"]: r for r in meta["rows"]}
    assert rows["teacher"]["file"] == str(local_teacher / "weights.pt")
    assert rows["teacher"]["accuracy"] == load_card(local_teacher)["metrics"]["test_accuracy"]
    assert rows["teacher-int8"]["size_bytes"] < rows["teacher"]["size_bytes"] / 3
    assert rows["teacher-pruned90"]["size_bytes"] < rows["teacher"]["size_bytes"] / 3
    assert rows["teacher-pruned90"]["parameters"] < 0.15 * rows["teacher"]["parameters"]
    # The pruned files hold the sparsity they claim; the distilled student names its teacher.
    pruned = load_row_model(report, "teacher-pruned90")
    assert weight_sparsity(pruned) == pytest.approx(0.9, abs=1e-4)
    assert nonzero_parameters(pruned) == rows["teacher-pruned90"]["parameters"]
    student_card = load_card(os.path.dirname(rows["distilled-student"]["file"]))
    assert student_card["parents"][0]["path"] == str(local_teacher)
    # CSV, Markdown and PNG carry the same rows.
    with open(report / "report.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [(t["name"], int(t["size_bytes"]), float(t["accuracy"])) for t in table] == [
        (r["name"], r["size_bytes"], pytest.approx(r["accuracy"], abs=1e-6)) for r in meta["rows"]]
    assert "| teacher-pruned50 |" in (report / "report.md").read_text()
    assert (report / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_reuses_given_student_artifacts(local_teacher, local_student, storage):
    rc = main(["compress-report", "--config", DIGITS, "--artifact", str(local_teacher),
               *_tiny(storage, f"compress.student={local_student}", f"compress.baseline={local_student}",
                      "compress.sparsities=[0.7]", "compress.finetune_epochs=0", "compress.latency_batches=[4]")])
    meta = json.loads((_report_dir(storage) / "report.json").read_text())
    rows = {r["name"]: r for r in meta["rows"]}
    assert rc == 0 and list(rows)[-1] == "teacher-pruned70"
    assert rows["distilled-student"]["file"] == rows["student-alone"]["file"] == str(local_student / "weights.pt")
    assert rows["distilled-student"]["accuracy"] == load_card(local_student)["metrics"]["test_accuracy"]


def test_report_rejects_a_teacher_for_other_classes(local_teacher, storage, capsys):
    state, card = load_state(local_teacher)
    card = {k: v for k, v in card.items() if k not in ("weights_sha256", "parameters", "path")}
    card["class_names"] = [f"glyph-{i}" for i in range(10)]
    other = save_artifact(new_artifact_path(storage, "teacher"), state, card)
    rc = main(["compress-report", "--config", DIGITS, "--artifact", str(other), *_tiny(storage)])
    err = capsys.readouterr().err
    assert rc == 2 and str(other) in err and "glyph-0" in err
    assert not (storage / "reports").exists()


# --- the methods ------------------------------------------------------------------------------

def test_global_pruning_hits_the_sparsity_across_layers_and_leaves_the_source_alone(digits):
    torch.manual_seed(0)
    model = build_model("cnn_small", digits.input_shape, 10, {})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = make_permanent(prune_global_l1(model, 0.8))
    assert weight_sparsity(pruned) == pytest.approx(0.8, abs=1e-3)
    assert weight_sparsity(model) == 0.0 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(n.endswith("_orig") for n in pruned.state_dict())  # permanent: plain weights again


@pytest.mark.parametrize("sparsity,smaller_than_dense", [(0.3, False), (0.9, True)])
def test_sparse_storage_round_trips_exactly_and_pays_off_only_when_sparse(digits, tmp_path, sparsity, smaller_than_dense):
    torch.manual_seed(0)
    model = make_permanent(prune_global_l1(build_model("cnn_small", digits.input_shape, 10, {"channels": [32, 64]}), sparsity))
    save_sparse(model, tmp_path / "sparse.pt")
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    restored = load_sparse_state(tmp_path / "sparse.pt")
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())
    sparse_size, dense_size = os.path.getsize(tmp_path / "sparse.pt"), os.path.getsize(tmp_path / "dense.pt")
    assert (sparse_size < dense_size) == smaller_than_dense


def test_int8_quantization_keeps_predictions_close_and_latency_restores_threads(digits):
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, 10, {"hidden": [64]}).eval()
    quantized = quantize_int8(model)
    x = torch.as_tensor(digits.x_test[:256])
    agree = (model(x).argmax(1) == quantized(x).argmax(1)).float().mean()
    assert agree > 0.9 and isinstance(model[1], torch.nn.Linear)  # the source model is not modified
    threads = torch.get_num_threads()
    assert latency_ms(quantized, digits.x_test, batch=500, repeats=2, threads=1) > 0  # 500 > test rows: tiled
    assert torch.get_num_threads() == threads


def test_report_distils_online_when_the_config_says_so(local_teacher, storage, digits):
    # distill.mode=online with jitter: the teacher must label each jittered batch (cached logits are of
    # clean images, which the rules refuse to pair with student augmentation).
    rc = main(["compress-report", "--config", DIGITS, "--artifact", str(local_teacher),
               *_tiny(storage, "distill.mode=online", "distill.augment.translate=1")])
    rows = {r["name"]: r for r in json.loads((_report_dir(storage) / "report.json").read_text())["rows"]}
    card = load_card(os.path.dirname(rows["distilled-student"]["file"]))
    assert rc == 0 and card["distillation"]["mode"] == "online (in-process)"
    assert evaluate(load_row_model(_report_dir(storage), "distilled-student"), digits.x_test,
                    digits.y_test)["accuracy"] == rows["distilled-student"]["accuracy"]


def test_a_pruned_teacher_whose_fine_tune_diverges_is_refused_not_saved(local_teacher, storage, capsys):
    # Found by review: at an absurd fine-tune lr the pruned model went NaN, was saved, and its row showed
    # the share of class 0 as its accuracy.
    rc = main(["compress-report", "--config", DIGITS, "--artifact", str(local_teacher),
               *_tiny(storage, "compress.finetune_lr=1.0e+30", "compress.sparsities=[0.5]")])
    err = capsys.readouterr().err
    assert rc == 2 and "teacher-pruned50: fine-tuning the pruned teacher diverged (NaN/inf in" in err
    assert "lower compress.finetune_lr (now 1e+30)" in err
    assert not list((storage / "reports").rglob("teacher-pruned50.pt"))
