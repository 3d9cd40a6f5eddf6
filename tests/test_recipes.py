"""Training recipes (no Ray): optimizers, schedules, augmentation, label smoothing, resume, config errors.

Each expectation is computed independently: the schedule's written formula, hand-shifted arrays,
the cross-entropy formula with smoothed targets, torch's own optimizers built by hand.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raydistill.core.config import ConfigError, load_config
from raydistill.core.config.schema import AugmentSpec, RecipeSection
from raydistill.core.engine import KDSettings
from raydistill.core.losses import kd_loss
from raydistill.core.loop import StageSpec, load_train_state, run_epochs, save_train_state
from raydistill.core.engine import iterate_batches, rank_shard
from raydistill.core.recipe import (apply_augment, augment_batch, augmented, lr_factor, make_optimizer,
                                    raw_zero_fill)
from raydistill.runtime import plan_workers

from conftest import REPO

DIGITS = REPO / "configs" / "digits.yaml"


@pytest.mark.parametrize("scheduler,warmup,milestones", [("cosine", 0, []), ("cosine", 3, []),
                                                          ("multistep", 2, [5, 8]), ("none", 2, [])])
def test_lr_factor_follows_the_written_schedule(scheduler, warmup, milestones):
    recipe = RecipeSection(scheduler=scheduler, warmup_epochs=warmup, milestones=milestones, gamma=0.2, epochs=10)
    for e in range(10):
        if e < warmup:
            expected = (e + 1) / (warmup + 1)
        elif scheduler == "cosine":
            expected = 0.5 * (1 + math.cos(math.pi * (e - warmup) / (10 - warmup)))
        elif scheduler == "multistep":
            expected = 0.2 ** len([m for m in milestones if m <= e])
        else:
            expected = 1.0
        assert lr_factor(e, recipe, 10) == pytest.approx(expected)


def test_optimizers_and_no_decay_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    sgd = make_optimizer(model, 0.1, RecipeSection(optimizer="sgd", momentum=0.8, nesterov=True, weight_decay=5e-4,
                                                   decay_norms_and_biases=False))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    decayed, free = sgd.param_groups
    # decayed: the two Linear weights only; free: both biases and the BatchNorm weight + bias
    assert {tuple(p.shape) for p in decayed["params"]} == {(3, 4), (2, 3)} and decayed["weight_decay"] == 5e-4
    assert len(free["params"]) == 4 and free["weight_decay"] == 0.0
    assert isinstance(make_optimizer(model, 1e-3, RecipeSection(optimizer="adamw")), torch.optim.AdamW)
    adam = make_optimizer(model, 1e-3)
    assert type(adam) is torch.optim.Adam and len(adam.param_groups) == 1


def test_translate_matches_a_hand_shifted_image_and_is_seeded():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    spec = AugmentSpec(translate=1)
    out_a = augment_batch(x, spec, (-9.0,), torch.Generator().manual_seed(3))
    out_b = augment_batch(x, spec, (-9.0,), torch.Generator().manual_seed(3))
    assert torch.equal(out_a, out_b)  # same seed, same views
    # Recover each example's offsets from the generator and shift by hand with numpy.
    off = torch.randint(0, 3, (2, 2), generator=torch.Generator().manual_seed(3)).numpy()
    for b in range(2):
        padded = np.pad(x[b, 0].numpy(), 1, constant_values=-9.0)
        expected = padded[off[0, b]:off[0, b] + 4, off[1, b]:off[1, b] + 4]
        np.testing.assert_array_equal(out_a[b, 0].numpy(), expected)
    differs = [not torch.equal(augment_batch(x, spec, (-9.0,), torch.Generator().manual_seed(s)), out_a)
               for s in range(4, 10)]
    assert any(differs)  # another seed, other views


def test_translate_and_flip_of_non_square_multichannel_images_match_numpy():
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.normal(size=(12, 3, 5, 7)).astype(np.float32))  # H != W: strides must be right
    offsets = torch.from_numpy(rng.integers(0, 5, size=(2, 12)))
    flips = torch.from_numpy(rng.random(12) < 0.5)
    fill = (-1.0, 0.5, 2.0)  # one border value per channel
    got = apply_augment(x, offsets, flips, 2, fill).numpy()
    for b in range(12):
        padded = np.stack([np.pad(x[b, c].numpy(), 2, constant_values=fill[c]) for c in range(3)])
        want = padded[:, offsets[0, b]:offsets[0, b] + 5, offsets[1, b]:offsets[1, b] + 7]
        np.testing.assert_array_equal(got[b], want[:, :, ::-1] if flips[b] else want)
    np.testing.assert_array_equal(apply_augment(x, None, flips, 2, fill).numpy()[flips.numpy()],
                                  x.numpy()[flips.numpy()][..., ::-1])  # flips alone


def test_cutout_erases_a_square_around_a_uniform_centre_and_clips_at_the_border():
    x = torch.randn(3000, 2, 6, 5)  # H != W
    fill = (-1.0, 3.0)
    out = augment_batch(x, AugmentSpec(cutout=3), fill, torch.Generator().manual_seed(5))
    spots = torch.randint(0, 2**16, (2, 3000), generator=torch.Generator().manual_seed(5))  # its only draws
    centres = np.stack([spots[0].numpy() * 6 // 2**16, spots[1].numpy() * 5 // 2**16])
    for b in range(3000):
        r, c = centres[:, b]
        want = x[b].numpy().copy()
        want[0, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = -1.0  # rows r-1..r+1, columns c-1..c+1, clipped
        want[1, max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = 3.0
        np.testing.assert_array_equal(out[b].numpy(), want)
    for axis, side in ((0, 6), (1, 5)):  # every pixel row / column a centre about 1/side of the time
        np.testing.assert_allclose(np.bincount(centres[axis], minlength=side) / 3000, 1 / side, atol=0.025)
    even = augment_batch(x[:50], AugmentSpec(cutout=2), fill, torch.Generator().manual_seed(1))
    assert all(int((e[0] == -1.0).sum()) in (1, 2, 4) for e in even)  # 2 x 2, clipped to 2 x 1 or 1 x 1 at the edge


def test_shift_flip_and_cutout_together_erase_the_square_in_the_shifted_flipped_image():
    x = torch.randn(40, 1, 6, 7)
    spec = AugmentSpec(translate=1, hflip=True, cutout=3)
    out = augment_batch(x, spec, (-4.0,), torch.Generator().manual_seed(2)).numpy()
    g = torch.Generator().manual_seed(2)  # the draws, in augment_batch's order: offsets, flips, spots
    off, flips, spots = (torch.randint(0, 3, (2, 40), generator=g).numpy(), (torch.rand(40, generator=g) < 0.5).numpy(),
                         torch.randint(0, 2**16, (2, 40), generator=g).numpy())
    for b in range(40):
        want = np.pad(x[b, 0].numpy(), 1, constant_values=-4.0)[off[0, b]:off[0, b] + 6, off[1, b]:off[1, b] + 7]
        want = want[:, ::-1].copy() if flips[b] else want.copy()
        r, c = spots[0, b] * 6 // 2**16, spots[1, b] * 7 // 2**16
        want[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = -4.0  # in the shifted, flipped image's coordinates
        np.testing.assert_array_equal(out[b, 0], want)


def test_hflip_mirrors_about_half_and_batches_stay_aligned():
    x = torch.randn(400, 1, 3, 5)
    out = augment_batch(x, AugmentSpec(hflip=True), (0.0,), torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 150 < sum(flipped) < 250
    y = torch.arange(400)
    batches = list(augmented(iter([(x, y)]), AugmentSpec(hflip=True), (0.0,), seed=0))
    assert torch.equal(batches[0][1], y)


def test_augmented_without_a_fill_shifts_in_zeros_in_every_channel():
    # fill None (or empty) is a border of 0.0 per channel of the batch: of an all-ones 3-channel image
    # shifted by (dr, dc), exactly (4 - |dr|) * (4 - |dc|) pixels per channel keep their 1.0, the rest are 0.0
    x = torch.ones(64, 3, 4, 4)
    for fill in (None, ()):
        out = next(augmented(iter([(x, torch.zeros(64))]), AugmentSpec(translate=1), fill, seed=1))[0]
        assert set(out.unique().tolist()) <= {0.0, 1.0}
        kept = out[:, 0].sum(dim=(1, 2))
        assert set(kept.tolist()) <= {16.0, 12.0, 9.0} and (kept < 16).any()
        assert torch.equal(out[:, 0], out[:, 2])  # the same shift in every channel


def test_raw_zero_fill_is_minus_mean_over_std():
    assert raw_zero_fill({"mean": [2.0, 4.0], "std": [4.0, 2.0]}, 2) == (-0.5, -2.0)


def test_kd_loss_with_label_smoothing_matches_the_formula_and_its_gradient():
    torch.manual_seed(0)
    s = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    eps, temp, alpha = 0.1, 3.0, 0.4
    target = F.one_hot(y, 5).double() * (1 - eps) + eps / 5
    hard = -(target * F.log_softmax(s, -1)).sum(-1).mean()
    p_t = F.softmax(t / temp, -1)
    soft = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
    expected = alpha * hard + (1 - alpha) * soft
    (g_expected,) = torch.autograd.grad(expected, s)
    got = kd_loss(s, t, y, temperature=temp, alpha=alpha, label_smoothing=eps)
    (g_got,) = torch.autograd.grad(got, s)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-9)
    assert torch.allclose(g_got, g_expected, atol=1e-10)


def _spec(recipe: RecipeSection, epochs: int) -> StageSpec:
    return StageSpec(stage="baseline", model_name="mlp", model_args={"hidden": [16]}, input_shape=(1, 4, 4),
                     num_classes=3, epochs=epochs, lr=0.05, batch_size=16, recipe=recipe, seed=1)


def test_resumed_run_with_a_schedule_ends_with_the_uninterrupted_weights(tmp_path):
    # Prepare: cosine + warm-up + SGD momentum + augmentation, a 6-epoch run on random data.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(96, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, 96)
    recipe = RecipeSection(optimizer="sgd", scheduler="cosine", warmup_epochs=1, epochs=6,
                           augment=AugmentSpec(translate=1), label_smoothing=0.1)
    batches = dict(train_batches=lambda e: iterate_batches([x, y], 16, shuffle=True, seed=e),
                   val_batches=lambda: iterate_batches([x, y], 64, shuffle=False))
    # Execute: straight through; then 3 epochs, a checkpoint file, and the rest from it.
    full = run_epochs(_spec(recipe, 6), report=lambda m, s: None, **batches)
    last = {}

    def stop_after_three(metrics, state):
        if metrics["epoch"] == 3:
            save_train_state(state, tmp_path / "state.pt")
            raise StopIteration  # the driver died after its third checkpoint

    with pytest.raises(StopIteration):
        run_epochs(_spec(recipe, 6), report=stop_after_three, **batches)
    resumed = run_epochs(_spec(recipe, 6), report=lambda m, s: last.update(lr=m["lr"]),
                         resume=load_train_state(tmp_path / "state.pt"), **batches)
    # Assert: same weights, resumed at epoch 3, and the last epoch ran at the schedule's lr
    # (warm-up 1, cosine over the other 5 epochs: e=5 is t=4 of N=5).
    for k in full.model:
        assert torch.allclose(full.model[k], resumed.model[k], atol=1e-6), k
    assert resumed.resumed_at == [3] and [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert last["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 4 / 5)))
    assert full.history[-1]["lr"] == pytest.approx(last["lr"])


@pytest.mark.parametrize("override, key", [
    ("teacher.optimizer=rmsprop", "teacher.optimizer"),
    ("distill.scheduler=linear", "distill.scheduler"),
    ("distill.momentum=1.5", "distill.momentum"),
    ("distill.nesterov=true", "distill.nesterov"),  # adam + nesterov
    ("teacher.weight_decay=-0.1", "teacher.weight_decay"),
    ("distill.weight_decay=.nan", "distill.weight_decay"),
    ("distill.lr=.inf", "distill.lr"),
    ("distill.warmup_epochs=500", "distill.warmup_epochs"),
    ("distill.label_smoothing=1.0", "distill.label_smoothing"),
    ("distill.grad_clip=-1", "distill.grad_clip"),
    ("teacher.milestones=[5]", "teacher.milestones"),  # without multistep
    ("distill.checkpoint_every=0", "distill.checkpoint_every"),
    ("distill.workers=some", "distill.workers"),
    ("distill.workers=0", "distill.workers"),
    ("teacher.augment.translate=-2", "teacher.augment.translate"),
    ("distill.augment.cutout=-1", "distill.augment.cutout"),
    ("teacher.augment.hflip=true", "teacher.augment.hflip"),  # digits
    ("distill.augment.translate=2", "distill.augment"),  # cached mode
    ("teacher.augment.rotate=5", "teacher.augment.rotate"),
    ("federated.augment.hflip=true", "federated.augment.hflip"),  # digits
    ("federated.augment.mixup=1.5", "federated.augment.mixup"),
    ("federated.augment.translate=-1", "federated.augment.translate"),
    ("data.val_fraction=-0.1", "data.val_fraction"),
    ("data.val_fraction=0", "data.val_fraction"),  # the pipeline's sweep needs validation
])
def test_bad_recipe_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(DIGITS, [override])


def test_valid_recipes_load():
    cfg = load_config(DIGITS, ["distill.optimizer=sgd", "distill.nesterov=true", "distill.scheduler=multistep",
                               "distill.milestones=[10, 20]", "distill.mode=online", "distill.augment.translate=2",
                               "data.val_fraction=0", "pipeline.tune=false", "teacher.workers=auto"])
    assert cfg.distill.milestones == [10, 20] and cfg.distill.augment.translate == 2 and cfg.data.val_fraction == 0
    ok = load_config(DIGITS, ["data.name=fashion_mnist", "teacher.augment.hflip=true", "federated.augment.hflip=true"])
    assert ok.teacher.augment.hflip and ok.federated.augment.hflip


@pytest.mark.parametrize("requested,cpus,gpus,nodes,use_gpu,expect", [
    ("auto", 2, 0, 1, False, (1, 2.0, 2, False)),  # one worker takes the whole laptop
    ("auto", 32, 0, 2, False, (2, 16.0, 16, False)),  # one worker per node
    ("auto", 16, 4, 1, True, (4, 4.0, 4, True)),  # one worker per GPU
    ("auto", 16, 4, 1, False, (1, 16.0, 16, False)),  # GPUs present but not asked for
    (2, 2, 0, 1, False, (2, 1.0, 1, False)),
    (4, 2, 0, 1, False, (4, 0.5, 1, False)),
])
def test_worker_plan(requested, cpus, gpus, nodes, use_gpu, expect):
    plan = plan_workers(requested, cpus=cpus, gpus=gpus, nodes=nodes, use_gpu=use_gpu)
    assert (plan.workers, plan.cpus, plan.threads, plan.use_gpu) == expect
    assert not plan.in_process  # a cluster (local=False) always gets worker actors


@pytest.mark.parametrize("requested,cpus,gpus,nodes,use_gpu,in_process", [
    ("auto", 2, 0, 1, False, True),  # this laptop alone: Ray Train's local mode, every core as threads
    ("auto", 16, 4, 1, False, True),  # GPUs present but not asked for
    ("auto", 16, 4, 1, True, False),  # GPUs asked for: one worker actor per GPU
    ("auto", 32, 0, 2, False, False),  # two nodes: one worker per node
    (1, 2, 0, 1, False, False),  # an explicit worker count keeps worker actors (restarted if they die)
])
def test_worker_plan_on_this_machine_alone(requested, cpus, gpus, nodes, use_gpu, in_process):
    plan = plan_workers(requested, cpus=cpus, gpus=gpus, nodes=nodes, use_gpu=use_gpu, local=True)
    assert plan.in_process == in_process
    if in_process:
        assert (plan.workers, plan.cpus, plan.threads, plan.use_gpu) == (1, float(cpus), cpus, False)


def test_kd_settings_have_no_defaults_of_their_own():
    with pytest.raises(TypeError):
        KDSettings()  # temperature/alpha come from the config (one home per default)


def test_rank_shards_are_equal_length_disjoint_and_aligned():
    x = np.arange(23 * 2).reshape(23, 2)
    y = np.arange(23)
    shards = [rank_shard([x, y], r, 3) for r in range(3)]
    assert [len(s[1]) for s in shards] == [7, 7, 7]  # 23 // 3 each: DDP steps line up
    seen = np.concatenate([s[1] for s in shards])
    assert len(set(seen.tolist())) == 21 and set(seen.tolist()) <= set(range(23))
    for sx, sy in shards:
        np.testing.assert_array_equal(sx[:, 0], 2 * sy)  # rows stay paired with their labels


def test_soft_target_source_is_checked():
    with pytest.raises(ConfigError, match=r"distill\.soft_targets"):
        load_config(DIGITS, ["distill.soft_targets=gpu_magic"])
    assert load_config(DIGITS, ["distill.soft_targets=ray_data"]).distill.soft_targets == "ray_data"


@pytest.mark.parametrize("override, message", [
    ("x=[", r"--set x=\[: the value is not valid YAML"),
    ("run.seed=-1", r"run\.seed: must be in \[0, 4294967295\]"),
    ("serve.batch_wait_timeout_s=.inf", r"serve\.batch_wait_timeout_s: must be a finite number"),
    ("federated.lr=.nan", r"federated\.lr: must be a finite number"),
])
def test_malformed_overrides_are_config_errors_not_tracebacks(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DIGITS, [override])
