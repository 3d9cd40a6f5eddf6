"""Artifacts: atomic writes, sha256 verification, no pickle execution (no Ray)."""
import json
import pickle

import pytest
import torch

from raydistill.core.artifacts import (ArtifactError, load_artifact, load_card, mark_chosen, resolve_artifact,
                                  save_artifact)
from raydistill.core.engine import evaluate
from raydistill.core.config import DataSection
from raydistill.core.data import load_data


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_round_trip_gives_the_same_predictions(local_student):
    model, card = load_artifact(local_student)
    bundle = load_data(DataSection(), seed=0)
    assert evaluate(model, bundle.x_test, bundle.y_test)["accuracy"] == pytest.approx(card["metrics"]["test_accuracy"])
    for key in ("architecture", "input_shape", "normalization", "class_names", "dataset", "weights_sha256",
                "versions", "parameters", "parents"):
        assert key in card


def test_tampered_weights_are_refused(local_student, tmp_path):
    art = _copy(local_student, tmp_path / "a")
    state = torch.load(art / "weights.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, art / "weights.pt")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(art)


def test_truncated_weights_are_refused(local_student, tmp_path):
    art = _copy(local_student, tmp_path / "b")
    data = (art / "weights.pt").read_bytes()
    (art / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(art)


def _with_card(art, edit=None, raw: bytes | None = None, weights=None):
    """Artifact ``art`` with its card edited (``edit(card)``) or replaced by ``raw`` bytes, and
    optionally other ``weights``; the sha256 in the card always matches the weights on disk."""
    import hashlib
    import io

    card = json.loads((art / "model.json").read_text())
    if weights is not None:
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        (art / "weights.pt").write_bytes(buffer.getvalue())
        card["weights_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    if edit is not None:
        edit(card)
    (art / "model.json").write_bytes(raw if raw is not None else json.dumps(card).encode())
    return art


DAMAGED_CARDS = [  # found by review: each was a KeyError/AttributeError/UnicodeDecodeError traceback
    ("no architecture", dict(edit=lambda c: c.pop("architecture")), "'architecture' must be"),
    ("unknown model", dict(edit=lambda c: c["architecture"].update(name="nosuch")), "unknown model 'nosuch'"),
    ("argument the model does not take", dict(edit=lambda c: c["architecture"]["args"].update(bogus=1)),
     "cannot build the card's architecture"),
    ("no class names", dict(edit=lambda c: c.pop("class_names")), "'class_names' must be a non-empty list"),
    ("input shape as text", dict(edit=lambda c: c.update(input_shape="1x8x8")), "'input_shape' must be 3 positive"),
    ("std of zero", dict(edit=lambda c: c["normalization"].update(std=[0.0])), "'normalization' must be"),
    ("card is a list", dict(raw=b"[]"), "expected a JSON object, got a JSON list"),
    ("card not UTF-8", dict(raw=b'{"name": "caf\xe9"}'), "not valid JSON"),
    ("weights are one tensor", dict(weights=torch.zeros(3)), "holds a Tensor, not a state dict"),
]


@pytest.mark.parametrize("why, damage, message", DAMAGED_CARDS, ids=[d[0] for d in DAMAGED_CARDS])
def test_a_damaged_card_or_state_is_an_artifact_error_naming_the_problem(local_student, tmp_path, why, damage, message):
    art = _with_card(_copy(local_student, tmp_path / "d"), **damage)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(art)


def test_a_card_without_normalization_loads_but_is_refused_for_serving(local_student, tmp_path):
    from raydistill.serving.app import ServeArgs, verified_artifact

    art = _with_card(_copy(local_student, tmp_path / "e"), edit=lambda c: c.pop("normalization"))
    model, card = load_artifact(art)  # a teacher for distillation needs no pixel statistics
    assert "normalization" not in card and sum(p.numel() for p in model.parameters()) == card["parameters"]
    with pytest.raises(ArtifactError, match="has no 'normalization'.*cannot be served"):
        verified_artifact(ServeArgs(artifact=str(art)))


class _Boom:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed_even_with_a_matching_hash(local_student, tmp_path, capsys):
    # An attacker who can also rewrite the card: the hash matches, weights_only still refuses.
    art = _copy(local_student, tmp_path / "c")
    with open(art / "weights.pt", "wb") as fh:
        pickle.dump({"w": _Boom()}, fh)
    from raydistill.core.artifacts import sha256_file

    card = load_card(art)
    card["weights_sha256"] = sha256_file(art / "weights.pt")
    (art / "model.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="cannot read"):
        load_artifact(art)
    assert "pickled code ran" not in capsys.readouterr().out


def test_failed_save_leaves_no_half_artifact(local_student, tmp_path):
    model, card = load_artifact(local_student)
    bad_card = dict(card, metrics={"not_json": object()})
    target = tmp_path / "runs" / "student-x"
    with pytest.raises(TypeError):
        save_artifact(target, model, bad_card)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temp dir was removed too


def test_missing_card_and_chosen_pointer(tmp_path, local_student):
    with pytest.raises(ArtifactError, match="model.json is missing"):
        resolve_artifact(str(tmp_path), tmp_path)
    with pytest.raises(ArtifactError, match="no chosen student yet"):
        resolve_artifact("chosen", tmp_path)
    mark_chosen(local_student, tmp_path)
    assert resolve_artifact("chosen", tmp_path) == local_student.resolve()


def _strict_json(text: str):
    """json.loads that refuses NaN/Infinity (what browsers, Starlette and most parsers do)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_never_saved_and_an_existing_artifact_survives(local_student, tmp_path, bad):
    model, card = load_artifact(local_student)
    target = _copy(local_student, tmp_path / "student-keep")
    before = (target / "weights.pt").read_bytes()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = list(state)[2]
    state[name].view(-1)[5] = bad
    with pytest.raises(ArtifactError, match=f"NaN or infinite weights in {name}"):
        save_artifact(target, state, card)
    assert (target / "weights.pt").read_bytes() == before  # nothing was replaced
    assert [p.name for p in tmp_path.iterdir()] == ["student-keep"]  # and no temp dir left behind


def test_an_artifact_with_non_finite_weights_on_disk_is_refused_at_load(local_student, tmp_path):
    # Written by an older version, or by hand with a matching hash: loading still refuses it.
    from raydistill.core.artifacts import sha256_file

    art = _copy(local_student, tmp_path / "d")
    state = torch.load(art / "weights.pt", weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first][0] = float("nan")
    torch.save(state, art / "weights.pt")
    card = load_card(art)
    card["weights_sha256"] = sha256_file(art / "weights.pt")
    (art / "model.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=f"NaN or infinite weights in {first}"):
        load_artifact(art)


def test_non_finite_card_numbers_are_stored_as_null(local_student, tmp_path):
    model, card = load_artifact(local_student)
    card = dict(card, metrics={"test_accuracy": 0.5, "history": [{"loss": float("nan"), "acc": float("-inf")}]})
    path = save_artifact(tmp_path / "student-nan", model, card)
    stored = _strict_json((path / "model.json").read_text())  # strict JSON: no NaN token in the file
    assert stored["metrics"] == {"test_accuracy": 0.5, "history": [{"loss": None, "acc": None}]}


@pytest.mark.parametrize("content", ["", "{", "[]", '{"path": ""}', '{"other": 1}'])
def test_a_damaged_chosen_pointer_is_a_clear_error(tmp_path, content):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "CHOSEN").write_text(content)
    with pytest.raises(ArtifactError, match="chosen-student pointer .* (is damaged|names no artifact)"):
        resolve_artifact("chosen", tmp_path)


@pytest.mark.parametrize("kind", ["../../x", "students", ""])
def test_latest_accepts_only_known_kinds(tmp_path, kind):
    with pytest.raises(ArtifactError, match="unknown artifact kind .* known: teacher, student, baseline, federated"):
        resolve_artifact(f"latest:{kind}", tmp_path)


def test_saving_over_an_artifact_replaces_it_whole_and_killed_saves_are_cleaned_up(local_student, tmp_path):
    import os
    import time

    model, card = load_artifact(local_student)
    target = tmp_path / "student-x"
    save_artifact(target, model, dict(card, name="first"))
    stale = tmp_path / ".student-y.dead.tmp"  # what a kill -9 mid-save leaves behind
    stale.mkdir()
    a_day_and_a_bit = time.time() - 86400 - 600
    os.utime(stale, (a_day_and_a_bit, a_day_and_a_bit))
    in_flight = tmp_path / ".student-z.live.tmp"  # a save running right now in another process
    in_flight.mkdir()

    save_artifact(target, model, dict(card, name="second"))

    assert load_card(target)["name"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".student-z.live.tmp", "student-x"]


def test_a_model_with_non_finite_test_metrics_is_not_saved(local_student, tmp_path):
    model, card = load_artifact(local_student)
    with pytest.raises(ArtifactError, match="test_loss=nan"):
        save_artifact(tmp_path / "student-bad", model, dict(card, metrics={"test_accuracy": 0.1, "test_loss": float("nan")}))
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_artifact(tmp_path):
    # Prepare: a child process whose files may not grow past 20 kB (RLIMIT_FSIZE: the kernel refuses
    # the write as it would on a full disk), saving a model whose weights need ~70 kB.
    import subprocess
    import sys
    import textwrap

    from conftest import REPO

    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(REPO / "platform")!r})
        from raydistill.core.artifacts import ArtifactError, save_artifact
        from raydistill.core.models import build_model
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        card = {{"kind": "student", "architecture": {{"name": "mlp", "args": {{"hidden": [256]}}}},
                "input_shape": [1, 8, 8], "class_names": list("0123456789"), "metrics": {{}}}}
        try:
            save_artifact({str(tmp_path / "artifacts" / "student" / "s1")!r},
                          build_model("mlp", (1, 8, 8), 10, {{"hidden": [256]}}), card)
        except ArtifactError as exc:
            print(exc)
    """)
    # Execute
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    # Assert: the error names the place and what to do; no artifact and no hidden temp dir remain.
    assert proc.returncode == 0, proc.stderr
    assert "no room to save the student at" in proc.stdout and "File too large" in proc.stdout
    assert "set run.storage_path to another disk" in proc.stdout
    assert list((tmp_path / "artifacts" / "student").iterdir()) == []
