"""Mixed-up cached views (augment.mixup, core.mixup): function matching's mixtures regenerated per
(seed, example, view), the teacher's logits on exactly them, the mixed hard label, and the KD loss
against a label distribution. Checked against numpy / float64 re-implementations of the formulas."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from raydistill.core.config import ConfigError, load_config
from raydistill.core.config.schema import AugmentSpec
from raydistill.core.engine import KDSettings, batch_loss, iterate_batches
from raydistill.core.losses import kd_loss_from_probs
from raydistill.core.models import build_model
from raydistill.core.topk import decode_topk
from raydistill.core.views import ViewCache, local_views, make_view, pick_views, view_draws

from conftest import REPO

DIGITS = str(REPO / "configs" / "digits.yaml")
SPEC = AugmentSpec(hflip=True, translate=2, mixup=0.6)
FILL = (-0.5,)


def numpy_view(img: np.ndarray, dy: int, dx: int, flip: bool, k: int, fill: float) -> np.ndarray:
    """One example ``(C, H, W)`` moved by ``(dy, dx)`` px with ``fill`` shifted in, then mirrored."""
    c, h, w = img.shape
    canvas = np.full((c, h + 2 * k, w + 2 * k), fill, np.float64)
    canvas[:, k + dy:k + dy + h, k + dx:k + dx + w] = img
    out = canvas[:, k:k + h, k:k + w]
    return out[:, :, ::-1] if flip else out


def numpy_mixed_view(pool: np.ndarray, i: int, seed: int, view: int, spec: AugmentSpec, fill: float) -> np.ndarray:
    """View ``view`` of example ``i`` by the module's formula: ``lam * own + (1 - lam) * partner`` with the
    partner moved by the same offsets and mirrored by its own flip; the draws are the inputs."""
    offsets, flips, _, mix = view_draws(seed, [i], view, spec, len(pool))
    dy, dx = spec.translate - int(offsets[0, 0]), spec.translate - int(offsets[1, 0])
    own = numpy_view(pool[i], dy, dx, spec.hflip and bool(flips[0]), spec.translate, fill)
    lam, j = float(mix.lams[0]), int(mix.partners[0])
    partner = numpy_view(pool[j], dy, dx, spec.hflip and bool(mix.flips[0]), spec.translate, fill)  # no flips: digits
    return own if lam == 1.0 else lam * own + (1.0 - lam) * partner


def test_a_mixed_view_is_lam_times_its_own_view_plus_the_rest_of_its_partner():
    pool = torch.randn(60, 1, 8, 8)
    got = make_view(pool, np.arange(60), 3, seed=7, spec=SPEC, fill=FILL, pool=pool).numpy()
    _, _, _, mix = view_draws(7, np.arange(60), 3, SPEC, 60)
    mixed = (mix.lams < 1).numpy()
    assert 10 < mixed.sum() < 60  # some of each, so both branches below are checked
    for i in range(60):
        np.testing.assert_allclose(got[i], numpy_mixed_view(pool.numpy(), i, 7, 3, SPEC, FILL[0]), rtol=1e-5, atol=1e-6)
    # an unmixed view is its own partner with weight 1; partners are training-set indices
    assert (mix.partners.numpy()[~mixed] == np.arange(60)[~mixed]).all() and (mix.lams.numpy()[~mixed] == 1).all()
    assert ((mix.partners >= 0) & (mix.partners < 60)).all()


def test_a_mixed_view_depends_on_seed_example_and_view_only_not_on_the_batch():
    pool = torch.randn(50, 1, 8, 8)
    whole = make_view(pool, np.arange(50), 2, seed=1, spec=SPEC, fill=FILL, pool=pool)
    perm = np.random.default_rng(3).permutation(50)[:17]
    part = make_view(pool[perm], perm, 2, seed=1, spec=SPEC, fill=FILL, pool=pool)
    assert torch.equal(part, whole[perm])
    assert not torch.equal(make_view(pool, np.arange(50), 2, seed=2, spec=SPEC, fill=FILL, pool=pool), whole)
    with pytest.raises(ValueError, match="population must be >= 1, got 0"):
        make_view(pool, np.arange(50), 2, seed=1, spec=SPEC, fill=FILL)


@pytest.mark.parametrize("a", [1.0, 0.3])
def test_views_mix_at_the_set_rate_and_lam_follows_beta_a_a(a):
    n = 200_000
    spec = AugmentSpec(hflip=True, mixup=0.25, mixup_alpha=a)
    _, _, _, mix = view_draws(5, np.arange(n), 0, spec, 1000)
    lams = mix.lams.numpy().astype(np.float64)
    mixed = lams < 1.0
    assert abs(mixed.mean() - 0.25) < 5 * np.sqrt(0.25 * 0.75 / n)  # binomial, 5 sigma
    lam = lams[mixed]
    assert abs(lam.mean() - 0.5) < 0.01
    assert abs(lam.var() - 1 / (4 * (2 * a + 1))) < 0.01  # Var Beta(a, a) = 1 / (4 (2a + 1))
    assert stats.kstest(lam, "beta", args=(a, a)).statistic < 0.01
    flips = mix.flips.numpy()[mixed]
    assert abs(flips.mean() - 0.5) < 0.01  # the partner's own flip
    assert np.bincount(mix.partners.numpy()[mixed], minlength=1000).min() > 0  # partners over the whole set


def float64_kd(z: torch.Tensor, p: torch.Tensor, t: torch.Tensor, temperature: float, alpha: float, eps: float):
    """``alpha * mean_b(-sum t' log softmax(z)) + (1 - alpha) T^2 mean_b KL(p || softmax(z / T))`` with
    ``t' = (1 - eps) t + eps / C``, written out in float64."""
    c = z.shape[1]
    log_q = z / temperature - torch.logsumexp(z / temperature, 1, keepdim=True)
    log_s = z - torch.logsumexp(z, 1, keepdim=True)
    kl = (p * (torch.log(p) - log_q)).sum(1).mean()
    ce = -(((1 - eps) * t + eps / c) * log_s).sum(1).mean()
    return alpha * ce + (1 - alpha) * temperature**2 * kl


@pytest.mark.parametrize("classes", [4, 10, 20])  # class-major (4: on AVX2 and AVX-512) and row-major softmax
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_kd_loss_against_a_label_distribution_is_the_formula_and_its_gradient(classes, eps):
    g = torch.Generator().manual_seed(classes)
    z = torch.randn(16, classes, generator=g, dtype=torch.float64) * 3
    p = torch.softmax(torch.randn(16, classes, generator=g, dtype=torch.float64), 1)
    y1, y2 = torch.randint(0, classes, (16,), generator=g), torch.randint(0, classes, (16,), generator=g)
    lam = torch.rand(16, 1, generator=g, dtype=torch.float64)
    t = lam * torch.eye(classes, dtype=torch.float64)[y1] + (1 - lam) * torch.eye(classes, dtype=torch.float64)[y2]
    z64 = z.clone().requires_grad_(True)
    want = float64_kd(z64, p, t, 3.0, 0.4, eps)
    want.backward()
    z32 = z.float().requires_grad_(True)
    got = kd_loss_from_probs(z32, p.float(), t.float(), temperature=3.0, alpha=0.4, label_smoothing=eps)
    got.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    np.testing.assert_allclose(z32.grad.numpy(), z64.grad.numpy(), rtol=1e-4, atol=1e-6)
    # a one-hot distribution is the class index: the same loss as integer labels
    one_hot = torch.eye(classes)[y1]
    as_index = kd_loss_from_probs(z.float(), p.float(), y1, temperature=3.0, alpha=0.4, label_smoothing=eps)
    as_rows = kd_loss_from_probs(z.float(), p.float(), one_hot, temperature=3.0, alpha=0.4, label_smoothing=eps)
    assert float(as_rows) == pytest.approx(float(as_index), rel=1e-6)


def _teacher_and_student():
    torch.manual_seed(0)
    return (build_model("cnn", (1, 8, 8), 10, {"channels": [4, 8], "fc": 16}).eval(),
            build_model("mlp", (1, 8, 8), 10, {"hidden": [16]}))


def test_mixed_cached_views_train_on_the_mixture_its_label_and_the_teachers_logits_on_it():
    teacher, student = _teacher_and_student()
    n = 48
    x, y = torch.randn(n, 1, 8, 8), torch.randint(0, 10, (n,))
    seen = []  # every image the teacher is shown

    def counting(v):
        seen.extend(v.unbind(0))
        return teacher(v).detach()

    cache = ViewCache(views=4, spec=SPEC, fill=FILL, seed=11, num_classes=10, population=n)
    values, indices, rest = cache.build(counting, x, torch.arange(n), 10, batch_size=16, pool=x)
    mixes = view_draws(11, np.arange(n)[:, None], np.arange(4), SPEC, n).mix
    # every mixture is its own teacher pass (never shared with another view); plain views are deduplicated
    plain = sum(len({make_view(x[i:i + 1], [i], v, seed=11, spec=SPEC, fill=FILL, pool=x)[0].numpy().tobytes()
                     for v in range(4) if mixes.lams[i, v] == 1}) for i in range(n))
    assert len(seen) == int((mixes.lams < 1).sum()) + plain
    kd = KDSettings(temperature=4.0, alpha=0.3)
    arrays, local = local_views(cache, [x, y, torch.arange(n), values, indices, rest], pool=(x, y))
    epoch, checked = 2, 0
    for x_view, y_b, z_t in local.batches(iterate_batches(arrays, 16, shuffle=True, seed=0), epoch):
        assert y_b.shape == (len(x_view), 10)
        for row in range(len(x_view)):
            i = next(i for i in range(n) if np.allclose(
                numpy_mixed_view(x.numpy(), i, 11, int(pick_views(11, [i], epoch, 4)[0]), SPEC, FILL[0]),
                x_view[row].numpy(), atol=1e-6))
            v = int(pick_views(11, [i], epoch, 4)[0])
            lam, j = float(mixes.lams[i, v]), int(mixes.partners[i, v])
            want = np.zeros(10)
            want[int(y[i])] += lam
            want[int(y[j])] += 1 - lam
            np.testing.assert_allclose(y_b[row].numpy(), want, atol=1e-6)
            checked += lam < 1
        # the cached logits are the teacher's on exactly these mixtures (fp16 storage)
        np.testing.assert_allclose(z_t.numpy(), teacher(x_view).detach().numpy(), rtol=2e-3, atol=2e-2)
        online = batch_loss(student, (x_view, y_b), kd=kd, teachers=[teacher])
        cached = batch_loss(student, (x_view, y_b, z_t), kd=kd)
        assert float(cached.detach()) == pytest.approx(float(online.detach()), rel=2e-3)
    assert checked > 10
    with pytest.raises(ValueError, match="training set of 48 examples, so they need all of it .pool.; got no pool"):
        local_views(cache, [x, y, torch.arange(n), values, indices, rest])
    with pytest.raises(ValueError, match="got 47 rows"):  # a share, or a pool out of step with the draws
        local_views(cache, [x, y, torch.arange(n), values, indices, rest], pool=(x[:47], y[:47]))


def test_ray_data_actor_and_worker_share_build_mixtures_from_the_whole_training_set():
    from raydistill.training.soft_targets import TeacherLogits
    from raydistill.training.worker import cached_share

    teacher, _ = _teacher_and_student()
    x = torch.randn(20, 1, 8, 8)
    cache = ViewCache(views=3, spec=SPEC, fill=FILL, seed=5, num_classes=10, population=20)
    card = {"architecture": {"name": "cnn", "args": {"channels": [4, 8], "fc": 16}}, "input_shape": [1, 8, 8],
            "class_names": [str(c) for c in range(10)]}
    state = {k: v.numpy() for k, v in teacher.state_dict().items()}
    actor = TeacherLogits([(card, state)], views=cache, topk=10, pool=x.numpy())
    out = actor({"x": x.numpy()[10:], "idx": np.arange(10, 20)})
    shard = cached_share([x[10:], torch.zeros(10, dtype=torch.long)], [teacher], cache, 10, rank=1, device="cpu",
                         pool=x)
    partners = view_draws(5, np.arange(10, 20)[:, None], np.arange(3), SPEC, 20).mix.partners
    assert (partners < 10).any()  # partners outside this share's rows: they come from the whole set
    for v in range(3):
        want = teacher(torch.from_numpy(np.stack([numpy_mixed_view(x.numpy(), i, 5, v, SPEC, FILL[0])
                                                  for i in range(10, 20)]).astype(np.float32))).detach()
        for values, indices, rest in ((out["values"], out["indices"], out["rest"]), shard[3:6]):
            got = decode_topk(*(torch.as_tensor(a[:, v]) for a in (values, indices, rest)), 10)
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("sets, message", [
    # clean cached logits cannot label a mixture: views, or the teacher online
    (["distill.mode=cached", "distill.augment={mixup: 0.5}"], "distill.augment: cached soft targets are the teacher's "
                                                              "logits on clean inputs"),
    (["distill.cached_views=4", "distill.augment={mixup: 1.5}"], "distill.augment.mixup: must be in [0, 1]"),
    (["distill.cached_views=4", "distill.augment={mixup: .nan}"], "distill.augment.mixup: must be a finite number"),
    (["distill.cached_views=4", "distill.augment={mixup: 0.5, mixup_alpha: 0}"], "distill.augment.mixup_alpha: must"),
    (["teacher.augment={mixup: -0.1}"], "teacher.augment.mixup: must be in [0, 1]"),
])
def test_mixup_settings_that_cannot_work_are_config_errors(sets, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(DIGITS, ["distill.mode=cached", *sets])


@pytest.mark.parametrize("sets", [
    ["distill.mode=cached", "distill.cached_views=4", "distill.augment={mixup: 0.5}"],  # mixup alone makes views
    ["distill.mode=online", "distill.augment={translate: 1, mixup: 0.5}"],  # the teacher labels each mixed batch
    ["teacher.augment={translate: 1, mixup: 0.3, mixup_alpha: 0.2}"],  # classic mixup for the teacher
])
def test_mixup_is_taken_wherever_the_teacher_sees_the_mixture(sets):
    cfg = load_config(DIGITS, sets)
    section = cfg.teacher if sets[0].startswith("teacher") else cfg.distill
    want = yaml.safe_load(sets[-1].split("=", 1)[1])  # {translate: 1, mixup: 0.3, mixup_alpha: 0.2}
    assert {k: getattr(section.augment, k) for k in want} == want and section.augment.active()


def test_without_a_cache_the_recipe_is_classic_mixup_within_the_batch_with_mixed_labels():
    from raydistill.core.recipe import augmented

    spec = AugmentSpec(mixup=0.5, mixup_alpha=0.4)
    x, y = torch.randn(400, 1, 4, 4, dtype=torch.float64).float(), torch.arange(400) % 10
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, 400, 100)]
    out = list(augmented(batches, spec, (0.0,), seed=3, num_classes=10))
    mixed = 0
    for (xb, yb), (xm, ym) in zip(batches, out):
        assert ym.shape == (100, 10) and torch.allclose(ym.sum(1), torch.ones(100))
        for r in range(100):
            lam = float(ym[r, int(yb[r])])
            if lam >= 1 - 1e-6:  # not mixed (or mixed with its own class: then lam is not seen in the label)
                continue
            # the image is lam * its own + (1 - lam) * one other example of the batch, whose class has 1 - lam
            others = [j for j in range(100) if int(yb[j]) != int(yb[r])
                      and abs(float(ym[r, int(yb[j])]) - (1 - lam)) < 1e-6
                      and torch.allclose(xm[r], lam * xb[r] + (1 - lam) * xb[j], atol=1e-5)]
            assert others, f"row {r}: no partner in the batch makes its image"
            mixed += 1
    assert 120 < mixed < 200  # ~50% of 400 mixed, less the ~10% that drew a partner of their own class
    with pytest.raises(ValueError, match="needs the number of classes"):
        next(augmented(batches, spec, (0.0,), seed=3))


@pytest.mark.parametrize("method, warmup", [("kd", 2), ("kd+lskd", 0), ("dkd", 0)])  # the unfused loss paths
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_every_method_learns_a_label_distribution_through_its_hard_term(method, warmup, alpha):
    from raydistill.core.methods import parse_method

    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, 1, 8, 8, generator=g)
    _, student = _teacher_and_student()
    z_t = torch.randn(12, 10, generator=g) * 2
    cls = torch.randint(0, 10, (12,), generator=g)
    other = (cls + 1 + torch.randint(0, 9, (12,), generator=g)) % 10
    lam = 0.55 + 0.4 * torch.rand(12, 1, generator=g)  # the example's class stays the larger part (DKD's target)
    t = lam * torch.eye(10)[cls] + (1 - lam) * torch.eye(10)[other]
    kd = KDSettings(temperature=3.0, alpha=alpha, method=parse_method(method), warmup_epochs=warmup, dkd_beta=2.0)
    as_rows = batch_loss(student, (x, t, z_t), kd=kd, epoch=1)
    as_class = batch_loss(student, (x, cls, z_t), kd=kd, epoch=1)
    # the soft term sees the same teacher and target class either way: the losses differ by alpha times the
    # hard terms' difference, -sum t log s against -log s_y (float64)
    log_s = torch.log_softmax(student(x).detach().double(), 1)
    ce_rows = -(t.double() * log_s).sum(1).mean()
    ce_class = -log_s.gather(1, cls[:, None])[:, 0].mean()
    assert float((as_rows - as_class).detach()) == pytest.approx(alpha * float(ce_rows - ce_class), abs=2e-5)
    if alpha == 1.0:
        assert float(as_rows.detach()) == pytest.approx(float(ce_rows), rel=1e-5)


def test_ray_data_arrays_come_back_in_training_set_order_and_lost_rows_are_refused(ray_session):
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    from raydistill.training.soft_targets import soft_target_arrays

    n = 300
    rng = np.random.default_rng(0)
    cols = {"x": rng.normal(size=(n, 1, 4, 4)).astype(np.float32), "y": np.arange(n) % 10, "idx": np.arange(n),
            "values": rng.normal(size=(n, 2, 10)).astype(np.float16), "indices": np.zeros((n, 2, 10), np.int16),
            "rest": rng.normal(size=(n, 2)).astype(np.float16)}

    def dataset(rows):
        table = pa.table({k: ArrowTensorArray.from_numpy(np.ascontiguousarray(v[rows])) if v.ndim > 1
                          else pa.array(v[rows]) for k, v in cols.items()})
        return ray_session.data.from_arrow(table).random_shuffle(seed=1).materialize()

    ds = dataset(np.arange(n))
    shuffled = np.concatenate([b["idx"] for b in ds.iter_batches(batch_size=4096, batch_format="numpy")])
    assert not np.array_equal(shuffled, np.arange(n))  # the order the arrays arrive in is not the training set's
    for got, want in zip(soft_target_arrays(ds), cols.values(), strict=True):
        np.testing.assert_array_equal(got, want)  # pool[j] is training row j again, with its own cache
    with pytest.raises(ValueError, match="rows lost or repeated"):
        soft_target_arrays(dataset(np.r_[np.arange(n - 1), 0]))


def test_compress_reports_distilled_student_trains_on_the_cached_views_raydistill_distill_would():
    from raydistill.compress.report import _view_cache
    from raydistill.core.data import load_data

    cfg = load_config(DIGITS, ["distill.mode=cached", "distill.cached_views=2",
                               "distill.augment={translate: 1, mixup: 0.5}"])
    bundle = load_data(cfg.data, 0)
    teacher = build_model("cnn", bundle.input_shape, 10, {"channels": [4, 8], "fc": 16}).eval()
    views, (values, indices, rest) = _view_cache(cfg.distill, bundle, teacher, (0.0,), seed=3)
    n = len(bundle.y_train)
    assert views.population == n and values.shape == (n, 2, 10)
    for v in range(2):
        want = teacher(torch.from_numpy(np.stack([numpy_mixed_view(bundle.x_train, i, 3, v, cfg.distill.augment, 0.0)
                                                  for i in range(40)]).astype(np.float32))).detach()
        np.testing.assert_allclose(values[:40, v].float().numpy(), want.numpy(), rtol=2e-3, atol=2e-2)
    assert _view_cache(load_config(DIGITS, []).distill, bundle, teacher, (0.0,), seed=3) == (None, ())


def _lr0_epoch_losses(spec, x, y, teachers=()) -> list[float]:
    """``run_epochs``' mean loss per epoch on shuffled batches of ``(x, y)``; at ``spec.lr`` 0 the seeded
    model stays as :func:`build_for_spec` builds it, so each loss is computable from the formula alone."""
    from raydistill.core.loop import run_epochs

    history = []
    run_epochs(spec, train_batches=lambda e: iterate_batches([x, y], spec.batch_size, shuffle=True, seed=e),
               val_batches=lambda: [], report=lambda metrics, state: history.append(metrics["train_loss"]),
               teachers=teachers)
    return history


def _epoch_batches(spec, x, y, epoch: int) -> list[tuple]:
    """``(clean images, class indices, mixed images, mixed labels (B, C))`` of ``epoch``'s batches, the mixing
    as ``run_epochs`` seeds it (core.recipe.augmented: classic mixup checked against its partners above)."""
    from raydistill.core.loop import shuffle_seed
    from raydistill.core.recipe import augmented

    clean = list(iterate_batches([x, y], spec.batch_size, shuffle=True, seed=epoch))
    mixed = augmented(clean, spec.recipe.augment, FILL, seed=shuffle_seed(spec.seed, epoch) + 1, num_classes=10)
    return [(xc, yc, xm, t) for (xc, yc), (xm, t) in zip(clean, mixed)]


def _mean_over_batches(values_and_sizes) -> float:
    """The example-weighted mean of per-batch means ``(value, batch size)``, as train_epoch reports it."""
    pairs = list(values_and_sizes)
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)


def _stage(stage: str, **kw):
    from raydistill.core.loop import StageSpec

    return StageSpec(stage=stage, model_name="mlp", model_args={"hidden": [8]}, input_shape=(1, 6, 6),
                     num_classes=10, epochs=2, lr=0.0, fill=FILL, **kw)


def test_online_kd_with_mixup_trains_on_the_written_loss_with_the_teacher_on_the_mixed_batch():
    # the path `distill.mode=online` + `distill.augment.mixup` runs on Ray Train's workers (core.loop): at
    # lr 0 each epoch's mean loss is the formula on that epoch's mixed batches, the teacher seeing the mixtures
    from raydistill.core.config.schema import RecipeSection
    from raydistill.core.loop import build_for_spec

    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(48, 1, 6, 6, generator=g), torch.randint(0, 10, (48,), generator=g)
    torch.manual_seed(5)
    teacher = build_model("mlp", (1, 6, 6), 10, {"hidden": [16]}).eval()
    kd = KDSettings(temperature=4.0, alpha=0.3)
    spec = _stage("student", batch_size=16, seed=3, kd=kd,
                  recipe=RecipeSection(augment=AugmentSpec(hflip=True, mixup=0.75, mixup_alpha=0.5)))
    student = build_for_spec(spec)

    def loss(x_student, x_teacher, labels):  # float64_kd: the written formula, above
        p_t = torch.softmax(teacher(x_teacher).detach().double() / kd.temperature, 1)
        z_s = student(x_student).detach().double()
        return float(float64_kd(z_s, p_t, labels.double(), kd.temperature, kd.alpha, 0.0)), len(labels)

    for epoch, got in enumerate(_lr0_epoch_losses(spec, x, y, teachers=[teacher])):
        batches = _epoch_batches(spec, x, y, epoch)
        assert all(t.shape == (16, 10) for *_, t in batches) and any((t.max(1).values < 1).any() for *_, t in batches)
        assert got == pytest.approx(_mean_over_batches(loss(xm, xm, t) for _, _, xm, t in batches), rel=1e-5)
        # a teacher labelling the clean batch, or the example's own class as the hard label, gives other numbers
        on_clean = _mean_over_batches(loss(xm, xc, t) for xc, _, xm, t in batches)
        one_hot = _mean_over_batches(loss(xm, xm, torch.eye(10)[yc]) for _, yc, xm, _ in batches)
        assert got != pytest.approx(on_clean, rel=1e-3) and got != pytest.approx(one_hot, rel=1e-3)


def test_the_teacher_and_baseline_stages_train_on_mixed_labels_with_label_smoothing():
    # teacher.augment.mixup / the baseline: plain cross-entropy against the mixed label, smoothed by eps:
    # -sum_c ((1 - eps) t_c + eps / C) log s_c per row (float64_kd at alpha 1), at lr 0 on run_epochs' own batches
    from raydistill.core.config.schema import RecipeSection
    from raydistill.core.loop import build_for_spec

    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(40, 1, 6, 6, generator=g), torch.randint(0, 10, (40,), generator=g)
    eps = 0.1
    spec = _stage("teacher", batch_size=8, seed=4,
                  recipe=RecipeSection(label_smoothing=eps, augment=AugmentSpec(translate=1, mixup=0.5)))
    model = build_for_spec(spec)
    uniform = torch.full((8, 10), 0.1, dtype=torch.float64)  # weighted by 1 - alpha = 0: no teacher
    for epoch, got in enumerate(_lr0_epoch_losses(spec, x, y)):
        want = _mean_over_batches((float(float64_kd(model(xm).detach().double(), uniform, t.double(), 1.0, 1.0, eps)),
                                   len(t)) for _, _, xm, t in _epoch_batches(spec, x, y, epoch))
        assert got == pytest.approx(want, rel=1e-5)
