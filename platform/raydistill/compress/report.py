"""``raydistill compress-report``: which compression should I use? Distillation vs INT8 dynamic
quantization vs global magnitude pruning, measured on the same test split.

Rows: the teacher; the student trained alone; the distilled student (both trained in-process
with :func:`engine.fit` from ``cfg.distill`` settings, or reused via ``compress.baseline`` /
``compress.student``); INT8 of the teacher and of the distilled student; the teacher pruned
at each ``compress.sparsities`` with a short fine-tune. Columns: test accuracy, parameters
(nonzero for pruned rows), bytes on disk of the file each row saved, median CPU latency per
batch size. No Ray: every model here fits one process.
"""
from __future__ import annotations

import logging

import datetime as _dt
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from raydistill.core.artifacts import (ArtifactError, WEIGHTS_FILE, check_fits, load_artifact, new_artifact_path,
                                       non_finite_tensors, resolve_artifact, save_artifact, stamped_name)
from raydistill.core.cards import build_card, distillation_record, parent_entry
from raydistill.compress.methods import (file_bytes, latency_ms, load_sparse_state, make_permanent, nonzero_parameters,
                               prune_global_l1, save_sparse, weight_sparsity)
from raydistill.core.config import Config
from raydistill.core.data import DataBundle
from raydistill.core.engine import KDSettings, evaluate, fit, predict_logits, teacher_view_cache
from raydistill.core.models import build_model, count_parameters, quantize_int8
from raydistill.core.recipe import raw_zero_fill
from raydistill.core.topk import resolve_topk
from raydistill.core.views import ViewCache

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"


@dataclass(kw_only=True)
class Row:
    """One compared model. ``file`` is the weights file whose size is ``size_bytes``."""

    name: str
    method: str
    architecture: dict  # {"name", "args"} of the float model it came from
    format: str  # artifact | int8-dynamic | sparse-csr
    file: str
    accuracy: float
    parameters: int
    size_bytes: int
    latency_ms: dict[str, float] = field(default_factory=dict)  # {"1": ms, "64": ms}
    note: str = ""


def run_compress_cli(cfg: Config, args) -> Path:
    """Entry point of ``raydistill compress-report --artifact <teacher>``; returns the report dir."""
    from raydistill.core.preflight import preflight

    bundle = preflight(cfg, "compress-report")
    teacher_path = resolve_artifact(getattr(args, "artifact", "") or "latest:teacher", cfg.storage_dir())
    out_dir = report_dir(cfg)
    rows = build_report(cfg, teacher_path, bundle, out_dir)
    write_report(rows, out_dir, meta=_meta(cfg, bundle, teacher_path))
    logger.info(markdown_table(rows))
    logger.info(f"\ncompress-report: {out_dir} (report.md, report.csv, report.png, report.json)")
    return out_dir


def report_dir(cfg: Config) -> Path:
    if cfg.compress.output:
        return Path(cfg.compress.output).expanduser().resolve()
    return cfg.storage_dir() / "reports" / stamped_name("compress")


def _load_checked(path: Path, bundle: DataBundle) -> tuple[nn.Module, dict]:
    """An artifact's model, checked to fit this data set (same class list and input shape)."""
    model, card = load_artifact(path)
    check_fits(card, bundle, what=f"artifact {path}")
    return model, card


def build_report(cfg: Config, teacher_path: Path, bundle: DataBundle, out_dir: Path) -> list[Row]:
    """Train or load every model, compress, save each one under ``out_dir`` and measure it."""
    teacher, teacher_card = _load_checked(teacher_path, bundle)
    baseline_path = _student_artifact(cfg, bundle, teacher_path, teacher_card, teacher, out_dir, distilled=False)
    student_path = _student_artifact(cfg, bundle, teacher_path, teacher_card, teacher, out_dir, distilled=True)
    baseline, baseline_card = _load_checked(baseline_path, bundle)
    student, student_card = _load_checked(student_path, bundle)
    measure = _Measure(cfg, bundle, out_dir)
    rows = [measure.artifact("teacher", "none", teacher, teacher_path, teacher_card),
            measure.artifact("student-alone", "smaller model, cross-entropy only", baseline, baseline_path, baseline_card),
            measure.artifact("distilled-student", _kd_method(student_card), student, student_path, student_card),
            measure.int8("teacher-int8", teacher, teacher_card),
            measure.int8("distilled-student-int8", student, student_card)]
    for sparsity in cfg.compress.sparsities:
        rows.append(measure.pruned(f"teacher-pruned{round(sparsity * 100)}", teacher, teacher_card, sparsity))
    return rows


def _view_cache(d, bundle: DataBundle, teacher: nn.Module, fill: tuple[float, ...], seed: int) -> tuple:
    """``(ViewCache, cache)`` of the teacher on ``distill.cached_views`` seeded views of the training set
    (what ``raydistill distill`` trains on), or ``(None, ())`` without views: cached logits of clean inputs."""
    if d.cached_views <= 0:
        return None, ()
    views = ViewCache.of_section(d, bundle, fill=fill, seed=seed)
    x = torch.as_tensor(bundle.x_train)
    k = resolve_topk(d.cache_topk, bundle.num_classes)
    return views, teacher_view_cache(views, [teacher], x, torch.arange(len(x)), k, pool=x)


def _kd_method(card: dict) -> str:
    d = card.get("distillation", {})
    return f"{d.get('method', 'kd')} T={d.get('temperature')} alpha={d.get('alpha')}" if d else "distilled"


def _student_artifact(cfg: Config, bundle: DataBundle, teacher_path: Path, teacher_card: dict, teacher: nn.Module,
                      out_dir: Path, *, distilled: bool) -> Path:
    """Reuse ``compress.student``/``compress.baseline`` when set; else train ``distill.student``
    in-process (same init and batches for both; KD as ``distill.mode`` says: the teacher's logits
    computed once (cached; with ``distill.cached_views`` on its seeded views, core.views), or the teacher
    run on each augmented batch (online))."""
    ref = cfg.compress.student if distilled else cfg.compress.baseline
    if ref:
        return resolve_artifact(ref, cfg.storage_dir())
    d = cfg.distill
    torch.manual_seed(cfg.run.seed)
    model = build_model(d.student.name, bundle.input_shape, bundle.num_classes, d.student.args)
    kd = KDSettings.for_distill(d) if distilled else None
    online = distilled and d.mode == "online"
    fill = raw_zero_fill(bundle.normalization, bundle.input_shape[0])
    views, view_cache = _view_cache(d, bundle, teacher, fill, cfg.run.seed) if distilled and not online else (None, ())
    logits = predict_logits(teacher, bundle.x_train) if distilled and not online and views is None else None
    fit(model, bundle.x_train, bundle.y_train, epochs=d.epochs, lr=d.lr, batch_size=d.batch_size,
        seed=cfg.run.seed, recipe=d, kd=kd, teacher_logits=logits, teachers=[teacher] if online else (),
        fill=fill, num_classes=bundle.num_classes, views=views, view_cache=view_cache)
    test = evaluate(model, bundle.x_test, bundle.y_test)
    kind = "student" if distilled else "baseline"
    extra = ({"distillation": {**distillation_record(d), "mode": f"{d.mode} (in-process)"}}
             if distilled else {})
    card = build_card(kind=kind, model_name=d.student.name, model_args=d.student.args, bundle=bundle,
                      seed=cfg.run.seed, metrics={"test_accuracy": test["accuracy"], "test_loss": test["loss"],
                                                  "val_accuracy": None, "epochs": d.epochs, "history": []},
                      parents=[parent_entry(teacher_path, teacher_card, weight=1.0)] if distilled else [],
                      training={"in_process": True, "epochs": d.epochs, "lr": d.lr, "batch_size": d.batch_size,
                                "seed": cfg.run.seed}, **extra)
    return save_artifact(new_artifact_path(out_dir, kind), model, card)


class _Measure:
    """Saves a model in its row's format and measures accuracy, size and latency."""

    def __init__(self, cfg: Config, bundle: DataBundle, out_dir: Path):
        self.cfg, self.bundle = cfg, bundle
        self.models_dir = out_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)

    def _row(self, model: nn.Module, **kw) -> Row:
        c = self.cfg.compress
        lat = {str(b): latency_ms(model, self.bundle.x_test, batch=b, repeats=c.latency_repeats, threads=c.threads)
               for b in c.latency_batches}
        accuracy = evaluate(model, self.bundle.x_test, self.bundle.y_test)["accuracy"]
        return Row(accuracy=accuracy, size_bytes=file_bytes(kw["file"]), latency_ms=lat, **kw)

    def artifact(self, name: str, method: str, model: nn.Module, path: Path, card: dict) -> Row:
        return self._row(model, name=name, method=method, architecture=card["architecture"], format="artifact",
                         file=str(Path(path) / WEIGHTS_FILE), parameters=count_parameters(model),
                         note=f"float32 artifact {Path(path).name}")

    def int8(self, name: str, model: nn.Module, card: dict) -> Row:
        quantized = quantize_int8(model)
        path = self.models_dir / f"{name}.pt"
        torch.save(quantized.state_dict(), path)
        convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        note = "Linear weights int8, activations quantized per batch" + (f"; {convs} conv layers stay float32" if convs else "")
        return self._row(quantized, name=name, method="INT8 dynamic quantization", architecture=card["architecture"],
                         format="int8-dynamic", file=str(path), parameters=count_parameters(model), note=note)

    def pruned(self, name: str, teacher: nn.Module, card: dict, sparsity: float) -> Row:
        c = self.cfg.compress
        model = prune_global_l1(teacher, sparsity)
        if c.finetune_epochs:
            fit(model, self.bundle.x_train, self.bundle.y_train, epochs=c.finetune_epochs, lr=c.finetune_lr,
                batch_size=self.cfg.teacher.batch_size, seed=self.cfg.run.seed)
        model = make_permanent(model).eval()
        broken = non_finite_tensors(model.state_dict())
        if broken:  # never saved or scored: its "accuracy" would be a guess
            raise ArtifactError(f"{name}: fine-tuning the pruned teacher diverged (NaN/inf in {', '.join(broken[:3])}); "
                                f"lower compress.finetune_lr (now {c.finetune_lr:g}) or set compress.finetune_epochs=0")
        path = save_sparse(model, self.models_dir / f"{name}.pt")
        note = (f"weights {weight_sparsity(model):.1%} zero, fine-tuned {c.finetune_epochs} epoch(s); "
                f"stored as int32 CSR; latency with dense kernels")
        return self._row(model, name=name, method=f"global L1 pruning {sparsity:.0%} + fine-tune",
                         architecture=card["architecture"], format="sparse-csr", file=str(path),
                         parameters=nonzero_parameters(model), note=note)


def load_row_model(report: Path | str, name: str) -> nn.Module:
    """Rebuild row ``name`` of a saved report from its file alone (eval mode, CPU)."""
    meta = json.loads((Path(report) / REPORT_JSON).read_text())
    row = next((r for r in meta["rows"] if r["name"] == name), None)
    if row is None:
        raise ArtifactError(f"{report}: no row '{name}'; rows: {', '.join(r['name'] for r in meta['rows'])}")
    if row["format"] == "artifact":
        return load_artifact(Path(row["file"]).parent)[0]
    arch = row["architecture"]
    model = build_model(arch["name"], meta["input_shape"], meta["num_classes"], arch.get("args")).eval()
    if row["format"] == "int8-dynamic":
        model = quantize_int8(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # quantized tensor creation is deprecated
            model.load_state_dict(torch.load(row["file"], map_location="cpu", weights_only=True))
    else:
        model.load_state_dict(load_sparse_state(Path(row["file"])))
    return model.eval()


def _meta(cfg: Config, bundle: DataBundle, teacher_path: Path) -> dict:
    return {"teacher": str(teacher_path), "dataset": bundle.describe(), "input_shape": list(bundle.input_shape),
            "num_classes": bundle.num_classes, "threads": cfg.compress.threads,
            "latency_repeats": cfg.compress.latency_repeats, "torch": torch.__version__,
            "quantized_engine": torch.backends.quantized.engine,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def write_report(rows: list[Row], out_dir: Path, *, meta: dict) -> None:
    """report.json (rows + meta), report.csv, report.md and report.png under ``out_dir``."""
    from raydistill.compress.output import plot_report, write_csv

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / REPORT_JSON).write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=2))
    write_csv(rows, out_dir / "report.csv")
    (out_dir / "report.md").write_text(_markdown_document(rows, meta))
    plot_report(rows, out_dir / "report.png", title=f"{meta['dataset']['name']}: accuracy vs size vs latency")


def markdown_table(rows: list[Row]) -> str:
    from raydistill.compress.output import markdown_table as table

    return table(rows)


def _markdown_document(rows: list[Row], meta: dict) -> str:
    d = meta["dataset"]
    return (f"# Compression report: {d['name']}\n\nTeacher `{meta['teacher']}`; test split {d['test']} examples; "
            f"latency = median of {meta['latency_repeats']} runs, torch {meta['torch']}, {meta['threads']} thread(s), "
            f"quantized engine {meta['quantized_engine']}.\n\n{markdown_table(rows)}\n")


__all__ = ["run_compress_cli", "build_report", "load_row_model", "write_report", "Row", "markdown_table"]
