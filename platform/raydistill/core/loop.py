"""The epoch loop shared by every trainer (Ray Train workers, Tune trials, benchmarks).

No Ray here: the caller supplies how batches arrive, how metric sums are reduced across ranks
and how a checkpoint is reported, so the same code runs on one process or many.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .config.schema import RecipeSection
from .engine import KDSettings, conv_layout, evaluation_sums, metrics_from_sums, train_epoch, view_softener
from .hints import hint_for, tapped
from .recipe import augmented, make_optimizer, make_scheduler
from .models import build_model
from .views import LocalViews, ViewCache

Batches = Iterable[tuple[torch.Tensor, ...]]


@dataclass(kw_only=True)
class StageSpec:
    """Everything a trainer needs, independent of where it runs.

    ``kd`` is None for plain supervised training (teacher, student-alone baseline).
    """

    stage: str  # teacher | student | baseline
    model_name: str
    model_args: dict = field(default_factory=dict)
    input_shape: tuple[int, int, int]
    num_classes: int
    epochs: int
    lr: float  # peak learning rate (a Tune trial may replace it)
    batch_size: int  # per worker
    recipe: RecipeSection = field(default_factory=RecipeSection)  # optimizer, schedule, augmentation, ...
    fill: tuple[float, ...] = ()  # normalized raw-zero pixel per channel: the border of a translate
    seed: int = 0
    kd: KDSettings | None = None
    views: ViewCache | None = None  # distill.cached_views: batches carry cached views (core.views), not augment


@dataclass
class TrainState:
    """What a checkpoint holds: weights, optimizer, next epoch, the metric history and the
    epochs at which an interrupted run resumed (evidence that a restart did not start over)."""

    model: dict
    optimizer: dict
    epoch: int
    history: list[dict]
    resumed_at: list[int] = field(default_factory=list)
    scheduler: dict = field(default_factory=dict)
    hint: dict = field(default_factory=dict)  # fitnet's connector (core.hints); not part of the student

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "epoch": self.epoch, "history": self.history,
                "resumed_at": self.resumed_at, "scheduler": self.scheduler, "hint": self.hint}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(d["model"], d["optimizer"], int(d["epoch"]), list(d["history"]), list(d.get("resumed_at", [])),
                   dict(d.get("scheduler", {})), dict(d.get("hint", {})))


def shuffle_seed(seed: int, epoch: int, *, world: int = 1, rank: int = 0) -> int:
    """The seed of ``rank``'s shuffle in ``epoch``: distinct per (seed, epoch, rank), and a 1-worker
    Ray Train run, a Tune trial and a plain loop with the same seed see the same order."""
    return seed * 100003 + epoch * world + rank


def build_for_spec(spec: StageSpec) -> nn.Module:
    torch.manual_seed(spec.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    return build_model(spec.model_name, spec.input_shape, spec.num_classes, spec.model_args)


def run_epochs(spec: StageSpec, *, train_batches: Callable[[int], Batches], val_batches: Callable[[], Batches],
               report: Callable[[dict, TrainState], None], resume: TrainState | None = None,
               prepare_model: Callable[[nn.Module], nn.Module] = lambda m: m,
               reduce_sums: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
               before_epoch: Callable[[int], None] = lambda e: None,
               teachers: Sequence[nn.Module] = (), device: torch.device | str = "cpu",
               views: LocalViews | None = None) -> TrainState:
    """Train ``spec.epochs`` epochs (from ``resume.epoch`` if given), reporting after each.

    ``train_batches(epoch)`` yields this rank's batches; ``val_batches()`` this rank's share of
    validation; ``reduce_sums`` sums ``[loss, correct, count]`` over ranks. With ``spec.views``,
    batches are ``(x, y, rows)`` of ``views`` (:func:`core.views.local_views` of this rank's arrays).
    """
    if (spec.views is None) != (views is None):
        raise ValueError("run_epochs: spec.views and views go together (core.views.local_views of the train arrays)")
    model = build_for_spec(spec).to(device)
    hint = hint_for(spec.kd, model, teachers, spec.input_shape, seed=spec.seed + 1)
    with tapped(hint), conv_layout([model, hint, *teachers], device):  # taps off at the end; channels-last on a CPU
        if resume is not None:
            model.load_state_dict(resume.model)
            if hint is not None:
                hint.load_state_dict(resume.hint)
        trained = prepare_model(model)  # DDP wrapper on many ranks; shares parameters with `model`
        trained_hint = prepare_model(hint) if hint is not None else None  # its gradients all-reduce too
        recipe = spec.recipe
        optimizer = make_optimizer(trained if hint is None else nn.ModuleList([model, hint]), spec.lr, recipe)
        scheduler = make_scheduler(optimizer, recipe, spec.epochs)
        state = TrainState({}, {}, 0, [])
        if resume is not None:
            optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
            state = TrainState({}, {}, resume.epoch, list(resume.history), resume.resumed_at + [resume.epoch])
        soften = view_softener(spec.kd) if views is not None else None  # cached views yield probabilities
        for epoch in range(state.epoch, spec.epochs):
            before_epoch(epoch)
            started = time.perf_counter()
            # augmentation draws are seeded per (seed, epoch): a resumed run sees the same views
            batches = (views.batches(train_batches(epoch), epoch, soften=soften) if views is not None else
                       augmented(train_batches(epoch), recipe.augment, spec.fill,
                                 seed=shuffle_seed(spec.seed, epoch) + 1, num_classes=spec.num_classes))
            train_loss = train_epoch(trained, batches, optimizer, kd=spec.kd, teachers=teachers, device=device,
                                     label_smoothing=recipe.label_smoothing, grad_clip=recipe.grad_clip,
                                     epoch=epoch + 1, hint=trained_hint, probs=soften is not None)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            epoch_time = time.perf_counter() - started
            val = metrics_from_sums(reduce_sums(evaluation_sums(model, val_batches(), device)))
            metrics = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"],
                       "val_accuracy": val["accuracy"], "lr": lr, "epoch_time_s": epoch_time}
            state = TrainState(_cpu_state(model), optimizer.state_dict(), epoch + 1, state.history + [metrics],
                               state.resumed_at, scheduler.state_dict(), _cpu_state(hint) if hint is not None else {})
            report(metrics, state)
    return state


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}


STATE_FILE = "state.pt"  # the TrainState inside every checkpoint directory (Ray Train's and Tune's)


def state_from_checkpoint(checkpoint) -> TrainState | None:
    """The TrainState in a Ray Train/Tune ``Checkpoint`` (anything with ``as_directory()``), or None
    when there is none yet (a fresh run); duck-typed, so this module stays Ray-free."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_train_state(Path(d) / STATE_FILE)


def save_train_state(state: TrainState, path) -> None:
    torch.save(state.to_dict(), path)


def load_train_state(path) -> TrainState:
    """Checkpoints are read with ``weights_only=True``: tensors and plain containers only."""
    return TrainState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
