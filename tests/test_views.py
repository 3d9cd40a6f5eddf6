"""distill.cached_views (core.views): seeded views regenerated per example, top-k soft-target storage,
and cached-with-views giving the online loss. Checked against numpy re-implementations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from raydistill.core.config import ConfigError, load_config
from raydistill.core.config.schema import AugmentSpec
from raydistill.core.engine import KDSettings, batch_loss, iterate_batches, predict_logits
from raydistill.core.models import build_model
from raydistill.core.topk import cache_bytes, decode_topk, encode_topk, resolve_topk
from raydistill.core.views import ViewCache, local_views, make_view, pick_views, view_draws

from conftest import REPO

DIGITS = str(REPO / "configs" / "digits.yaml")

SPEC = AugmentSpec(hflip=True, translate=2)
FILL = (-0.5,)


def numpy_view(img: np.ndarray, dy: int, dx: int, flip: bool, k: int, fill: float) -> np.ndarray:
    """One example ``(C, H, W)`` moved by ``(dy, dx)`` px with ``fill`` shifted in, then mirrored."""
    c, h, w = img.shape
    canvas = np.full((c, h + 2 * k, w + 2 * k), fill, np.float32)
    canvas[:, k + dy:k + dy + h, k + dx:k + dx + w] = img  # the image moved by (dy, dx) inside the padding
    out = canvas[:, k:k + h, k:k + w]
    return out[:, :, ::-1] if flip else out


def test_a_view_is_the_image_translated_and_flipped_by_its_own_draws():
    x = torch.randn(16, 1, 8, 8)
    idx = np.arange(100, 116)
    offsets, flips, *_ = view_draws(3, idx, 2, SPEC)
    got = make_view(x, idx, 2, seed=3, spec=SPEC, fill=FILL).numpy()
    for i in range(16):
        # the crop starts at offset o of the padded image: the content moves by k - o
        dy, dx = SPEC.translate - int(offsets[0, i]), SPEC.translate - int(offsets[1, i])
        want = numpy_view(x[i].numpy(), dy, dx, bool(flips[i]), SPEC.translate, FILL[0])
        np.testing.assert_allclose(got[i], want)
    assert set(offsets.flatten().tolist()) <= set(range(2 * SPEC.translate + 1))


def test_a_view_depends_on_seed_example_and_view_only_not_on_batch_or_shard():
    x = torch.randn(40, 1, 8, 8)
    idx = np.arange(40)
    whole = make_view(x, idx, 5, seed=9, spec=SPEC, fill=FILL)
    perm = np.random.default_rng(0).permutation(40)[:13]  # another batch, other positions
    part = make_view(x[perm], idx[perm], 5, seed=9, spec=SPEC, fill=FILL)
    assert torch.equal(part, whole[perm])
    other_view = make_view(x, idx, 6, seed=9, spec=SPEC, fill=FILL)
    other_seed = make_view(x, idx, 5, seed=10, spec=SPEC, fill=FILL)
    assert not torch.equal(other_view, whole) and not torch.equal(other_seed, whole)


def numpy_cutout(img: np.ndarray, row: int, col: int, size: int, fill: float) -> np.ndarray:
    """``img`` ``(C, H, W)`` with the pixels of the size x size square whose centre is (row, col) set to ``fill``."""
    out = img.copy()
    for i in range(img.shape[1]):
        for j in range(img.shape[2]):
            if 0 <= i - row + size // 2 < size and 0 <= j - col + size // 2 < size:
                out[:, i, j] = fill
    return out


def test_a_cutout_view_is_the_translated_flipped_image_with_its_square_erased():
    spec = AugmentSpec(hflip=True, translate=1, cutout=3)
    x = torch.randn(64, 2, 7, 9)
    idx = np.arange(500, 564)
    offsets, flips, spots, _ = view_draws(8, idx, 1, spec)
    got = make_view(x, idx, 1, seed=8, spec=spec, fill=(-0.5, 0.25)).numpy()
    uncut = make_view(x, idx, 1, seed=8, spec=AugmentSpec(hflip=True, translate=1), fill=(-0.5, 0.25)).numpy()
    for i in range(64):
        row, col = int(spots[0, i]) * 7 // 2**16, int(spots[1, i]) * 9 // 2**16  # the centre pixel
        want = np.stack([numpy_view(x[i, c:c + 1].numpy(), 1 - int(offsets[0, i]), 1 - int(offsets[1, i]),
                                    bool(flips[i]), 1, f)[0] for c, f in enumerate((-0.5, 0.25))])
        np.testing.assert_allclose(uncut[i], want)  # the same view without its cutout
        want = np.stack([numpy_cutout(want[c:c + 1], row, col, 3, f)[0] for c, f in enumerate((-0.5, 0.25))])
        np.testing.assert_allclose(got[i], want)
        assert (got[i] != uncut[i]).any()  # every view loses pixels (a corner centre still erases 2 x 2)


def test_draws_are_uniform_and_views_are_picked_uniformly_per_epoch():
    offsets, flips, spots, _ = view_draws(0, np.arange(50_000), 1, AugmentSpec(hflip=True, translate=2, cutout=3))
    for axis in range(2):
        np.testing.assert_allclose(np.bincount(offsets[axis].numpy(), minlength=5) / 50_000, 0.2, atol=0.01)
        # cutout centres on a 10-px side: each pixel row / column 1/10 of the time
        np.testing.assert_allclose(np.bincount(spots[axis].numpy() * 10 // 2**16, minlength=10) / 50_000, 0.1, atol=0.01)
    assert abs(float(flips.float().mean()) - 0.5) < 0.01
    assert abs(np.corrcoef(spots[0].numpy(), offsets[0].numpy())[0, 1]) < 0.02  # independent of the offsets
    picks = [pick_views(0, np.arange(50_000), epoch, 4) for epoch in (1, 2)]
    for p in picks:
        np.testing.assert_allclose(np.bincount(p, minlength=4) / 50_000, 0.25, atol=0.01)
    # a new draw each epoch: the same view twice in a row only ~1/4 of the time
    assert abs(float(np.mean(picks[0] == picks[1])) - 0.25) < 0.01


def test_topk_storage_keeps_the_top_probabilities_and_spreads_the_rest_uniformly():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=3.0, size=(6, 2, 20)).astype(np.float32)
    values, indices, rest = encode_topk(torch.from_numpy(z), 5)
    assert values.dtype == torch.float16 and indices.dtype == torch.int16 and rest.dtype == torch.float16
    assert values.shape == (6, 2, 5) and rest.shape == (6, 2)
    probs = torch.softmax(decode_topk(values, indices, rest, 20), -1).numpy()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = np.argsort(-z, axis=-1)[..., :5]
    for i, j in np.ndindex(6, 2):
        inside = np.zeros(20, bool)
        inside[top[i, j]] = True
        np.testing.assert_allclose(probs[i, j, inside], p[i, j, inside], rtol=5e-3, atol=1e-5)
        rest_mass = 1.0 - p[i, j, inside].sum()
        np.testing.assert_allclose(probs[i, j, ~inside], rest_mass / 15, rtol=5e-3, atol=1e-5)
    values, indices, _ = encode_topk(torch.from_numpy(z), 20)  # k = C: the logits themselves, in class order
    assert np.array_equal(indices.numpy(), np.broadcast_to(np.arange(20, dtype=np.int16), z.shape))
    np.testing.assert_array_equal(values.numpy(), z.astype(np.float16))
    np.testing.assert_allclose(decode_topk(values, indices, _, 20).numpy(), z, rtol=1e-3, atol=1e-2)


def test_topk_auto_and_cache_size_formula():
    assert resolve_topk(0, 10) == 10 and resolve_topk(0, 100) == 100 and resolve_topk(0, 1000) == 10
    assert resolve_topk(7, 5) == 5 and resolve_topk(3, 10) == 3
    # 60,000 x 8 views x 1 teacher x (10 fp16 values + 10 int16 indices + 1 fp16 rest) bytes
    assert cache_bytes(60_000, 8, 1, 10) == 60_000 * 8 * (10 * 2 + 10 * 2 + 2)


def _teacher_and_student():
    torch.manual_seed(0)
    teacher = build_model("cnn", (1, 8, 8), 10, {"channels": [4, 8], "fc": 16}).eval()
    with torch.no_grad():  # a confident teacher: its logits move clearly from one view to another
        [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(20)
    student = build_model("mlp", (1, 8, 8), 10, {"hidden": [16]})
    return teacher, student


@pytest.mark.parametrize("spec", [SPEC, AugmentSpec(hflip=True, translate=2, cutout=4)])
def test_cached_views_give_the_online_loss_on_the_same_batch(spec):
    teacher, student = _teacher_and_student()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    idx = torch.arange(100, 164)  # training-set indices of a share that does not start at 0 (rows != idx)
    cache = ViewCache(views=4, spec=spec, fill=FILL, seed=11, num_classes=10)
    values, indices, rest = cache.build(lambda v: teacher(v).detach(), x, idx, 10, batch_size=24)
    assert values.shape == (64, 4, 10) and rest.shape == (64, 4)
    kd = KDSettings(temperature=4.0, alpha=0.3)
    arrays, local = local_views(cache, [x, y, idx, values, indices, rest])
    assert len(arrays) == 3 and torch.equal(arrays[2], torch.arange(64))
    epoch = 3
    for x_view, y_b, z_t in local.batches(iterate_batches(arrays, 32, shuffle=True, seed=0), epoch):
        rows = []
        # which examples and views: the view picked for epoch 3, rebuilt here from (seed, idx, view)
        for row in range(len(y_b)):
            matches = [i for i in range(64) if torch.equal(y[i], y_b[row]) and
                       torch.equal(make_view(x[i:i + 1], [100 + i], int(pick_views(11, [100 + i], epoch, 4)[0]),
                                             seed=11, spec=spec, fill=FILL)[0], x_view[row])]
            assert len(matches) == 1
            rows += matches
        # the cached logits are the teacher's on exactly this view (fp16 storage), not on another one
        on_view = teacher(x_view).detach()
        np.testing.assert_allclose(z_t.numpy(), on_view.numpy(), rtol=2e-3, atol=2e-2)
        later = next(local.batches([(x[rows], y[rows], torch.tensor(rows))], epoch + 1))
        assert (later[2] - z_t).abs().max() > 0.5  # other views, other logits: the check above can fail
        online = batch_loss(student, (x_view, y_b), kd=kd, teachers=[teacher])
        cached = batch_loss(student, (x_view, y_b, z_t), kd=kd)
        assert float(cached.detach()) == pytest.approx(float(online.detach()), rel=2e-3)
        assert len(set(rows)) == len(rows)


@pytest.mark.parametrize("spec", [AugmentSpec(hflip=True), AugmentSpec(hflip=True, translate=1),
                                  AugmentSpec(hflip=True, cutout=3)])
def test_views_that_make_the_same_image_go_through_the_teacher_once_and_get_its_logits_on_that_image(spec):
    teacher, _ = _teacher_and_student()
    x, idx = torch.randn(30, 1, 8, 8), torch.arange(7, 37)
    seen = []  # every image the teacher is shown

    def counting(v):
        seen.extend(v.unbind(0))
        return teacher(v).detach()

    cache = ViewCache(views=8, spec=spec, fill=FILL, seed=4, num_classes=10)
    values, _, _ = cache.build(counting, x, idx, 10, batch_size=8)
    distinct = 0
    for i in range(30):
        images = [make_view(x[i:i + 1], [7 + i], v, seed=4, spec=spec, fill=FILL)[0] for v in range(8)]
        distinct += len({img.numpy().tobytes() for img in images})  # the images this example's views make
        # every view's targets are the teacher's logits on that view's own image (fp16 storage)
        np.testing.assert_allclose(values[i].float().numpy(), teacher(torch.stack(images)).detach().numpy(),
                                   rtol=2e-3, atol=2e-2)
    assert len(seen) == distinct  # each distinct image once, not 8 x 30 = 240
    assert distinct <= 60 if not (spec.translate or spec.cutout) else distinct > 60  # flips only: <= 2 images per example


def test_topk_views_give_each_example_the_teachers_top_probabilities_on_its_own_view():
    teacher, _ = _teacher_and_student()
    x, y, idx = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,)), torch.arange(40)
    cache = ViewCache(views=3, spec=SPEC, fill=FILL, seed=5, num_classes=10)
    values, indices, rest = cache.build(lambda v: teacher(v).detach(), x, idx, 4, batch_size=16)
    assert values.shape == (40, 3, 4) and indices.shape == (40, 3, 4) and rest.shape == (40, 3)
    arrays, local = local_views(cache, [x, y, idx, values, indices, rest])
    for x_view, _, z_t in local.batches(iterate_batches(arrays, 16, shuffle=True, seed=1), 2):
        z = teacher(x_view).detach().double().numpy()
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)  # the teacher's probabilities on exactly this view (numpy)
        got = torch.softmax(z_t.double(), -1).numpy()
        for row in range(len(z)):
            top = np.argsort(-z[row])[:4]
            inside = np.isin(np.arange(10), top)
            np.testing.assert_allclose(got[row, inside], p[row, inside], rtol=5e-3, atol=1e-4)
            np.testing.assert_allclose(got[row, ~inside], (1 - p[row, inside].sum()) / 6, rtol=5e-3, atol=1e-4)


def test_teacher_logits_actor_and_worker_share_build_the_same_cache_as_the_teacher_on_each_view():
    from raydistill.training.soft_targets import TeacherLogits
    from raydistill.training.worker import cached_share
    from raydistill.core.loop import StageSpec

    teacher, _ = _teacher_and_student()
    x = torch.randn(20, 1, 8, 8)
    cache = ViewCache(views=3, spec=SPEC, fill=FILL, seed=5, num_classes=10)
    card = {"architecture": {"name": "cnn", "args": {"channels": [4, 8], "fc": 16}}, "input_shape": [1, 8, 8],
            "class_names": [str(c) for c in range(10)]}
    state = {k: v.numpy() for k, v in teacher.state_dict().items()}
    out = TeacherLogits([(card, state)], views=cache, topk=10)({"x": x.numpy()[10:], "idx": np.arange(10, 20)})
    spec = StageSpec(stage="student", model_name="mlp", input_shape=(1, 8, 8), num_classes=10, epochs=1, lr=0.1,
                     batch_size=8, views=cache)
    shard = cached_share([x[10:], torch.zeros(10, dtype=torch.long)], [teacher], spec.views, 10, rank=1, device="cpu")
    assert shard[2].tolist() == list(range(10, 20))  # rank 1 of 2 holds rows 10..19
    for v in range(3):
        want = teacher(make_view(x[10:], np.arange(10, 20), v, seed=5, spec=SPEC, fill=FILL)).detach()
        np.testing.assert_allclose(decode_topk(torch.from_numpy(out["values"][:, v]), torch.from_numpy(out["indices"][:, v]),
                                               torch.from_numpy(out["rest"][:, v]), 10).numpy(), want.numpy(),
                                   rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(decode_topk(shard[3][:, v], shard[4][:, v], shard[5][:, v], 10).numpy(),
                                   want.numpy(), rtol=2e-3, atol=2e-3)


def test_every_teacher_pass_runs_a_conv_teacher_channels_last_and_gives_back_its_values_and_layout():
    # Cached soft targets are all teacher forwards; oneDNN runs a conv teacher ~2x faster channels-last
    # on a CPU. Hooked on the second conv: (8, 4, 3, 3) is channels-last or contiguous, never both.
    from raydistill.training.soft_targets import VIEW_COLUMNS, TeacherLogits
    from raydistill.training.worker import cached_share

    teacher, _ = _teacher_and_student()
    x, y = torch.randn(20, 1, 8, 8), torch.zeros(20, dtype=torch.long)
    cache = ViewCache(views=3, spec=SPEC, fill=FILL, seed=5, num_classes=10)
    with torch.no_grad():  # the references: the default layout, as built
        clean = teacher(x).numpy()
        view1 = teacher(make_view(x, np.arange(20), 1, seed=5, spec=SPEC, fill=FILL)).numpy()
    card = {"architecture": {"name": "cnn", "args": {"channels": [4, 8], "fc": 16}}, "input_shape": [1, 8, 8],
            "class_names": [str(c) for c in range(10)]}
    state = {k: v.numpy() for k, v in teacher.state_dict().items()}
    actor, views_actor = TeacherLogits([(card, state)]), TeacherLogits([(card, state)], views=cache, topk=10)
    layouts = []  # the hooked weight's layout at each forward of the pass under way
    for model in (teacher, actor.models[0], views_actor.models[0]):
        model[3].register_forward_hook(lambda m, i, o: layouts.append(m.weight.is_contiguous(
            memory_format=torch.channels_last)))

    def channels_last(name, run):
        layouts.clear()
        out = run()
        assert layouts and all(layouts), (name, layouts)  # every forward of this pass
        return out

    def view_1(values, indices, rest):
        return decode_topk(torch.as_tensor(values[:, 1]), torch.as_tensor(indices[:, 1]), torch.as_tensor(rest[:, 1]),
                           10).numpy()

    share_views = channels_last("cached_share views", lambda: cached_share([x, y], [teacher], cache, 10, rank=0,
                                                                            device="cpu")[3:])
    actor_views = channels_last("actor views", lambda: views_actor({"x": x.numpy(), "idx": np.arange(20)}))
    got = {"predict_logits": channels_last("predict_logits",
                                           lambda: predict_logits(teacher, x.numpy(), batch_size=8)),
           "cached_share": channels_last("cached_share", lambda: cached_share([x, y], [teacher], None, 10, rank=0,
                                                                              device="cpu")[2].numpy()),
           "actor": channels_last("actor", lambda: actor({"x": x.numpy()})["logits"]),
           "cached_share views": view_1(*share_views),
           "actor views": view_1(*(actor_views[c] for c in VIEW_COLUMNS))}
    for name, want, tol in [("predict_logits", clean, 1e-4), ("cached_share", clean, 1e-4), ("actor", clean, 1e-4),
                            ("cached_share views", view1, 2e-3), ("actor views", view1, 2e-3)]:  # fp16 views
        np.testing.assert_allclose(got[name], want, rtol=tol, atol=tol, err_msg=name)
    assert all(p.is_contiguous() for p in teacher.parameters())  # the caller's teacher: handed back as it was
    # an actor only infers: its teachers went channels-last once, in its constructor, and stay so
    assert all(m[3].weight.is_contiguous(memory_format=torch.channels_last) and not m[3].weight.is_contiguous()
               for m in (actor.models[0], views_actor.models[0]))


@pytest.mark.parametrize("sets, message", [
    (["distill.cached_views=4", "distill.augment={translate: 1}", "distill.mode=online"], "set distill.mode=cached"),
    (["distill.cached_views=4"], "needs distill.augment"),
    (["distill.augment={translate: 1}"], "set distill.cached_views=K"),
    (["distill.cached_views=-1"], "distill.cached_views: must be >= 0"),
    (["distill.cache_max_gb=.inf"], "distill.cache_max_gb"),
])
def test_view_settings_that_cannot_work_are_config_errors(sets, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(DIGITS, ["distill.mode=cached", *sets])


def test_a_cache_past_its_limit_is_refused_with_its_size_before_any_teacher_runs(tmp_path):
    from raydistill.core.data import load_data
    from raydistill.training.driver import check_cache_size

    cfg = load_config(DIGITS, ["distill.mode=cached", "distill.cached_views=8", "distill.augment={translate: 1}",
                               "distill.cache_max_gb=0.00001", f"run.storage_path={tmp_path}"])
    bundle = load_data(cfg.data, 0)
    n = len(bundle.y_train)
    with pytest.raises(ConfigError) as err:
        check_cache_size(cfg, bundle, 1)
    assert f"{n} examples x 8 views x 1 teacher(s) x top-10 of 10 classes = {n * 8 * 42 / 1e9:.3f} GB" in str(err.value)
    assert "over distill.cache_max_gb=1e-05" in str(err.value)
