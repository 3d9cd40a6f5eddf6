"""The README cannot rot: its commands name real subcommands, its overrides and configs load,
and `make demo` / `make test` run what the README says (no Ray)."""
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass

import pytest

from raydistill.cli.commands import build_parser
from raydistill.core.config import load_config

from conftest import REPO, load_benchmark

README = (REPO / "README.md").read_text()
DIGITS = "configs/digits.yaml"

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)  # a fenced block's body
SPAN = re.compile(r"`([^`]+)`")  # inline code; may wrap onto the next line
PLACEHOLDER = re.compile(r"<([\w.-]+)>")  # runs/artifacts/teacher/<t0>, <dir>, ...

# README commands that cannot be checked by loading their overrides, each with the reason. Keyed by
# the command text (whitespace collapsed). An entry the README no longer contains fails the test below.
NOT_CHECKABLE = {
    "--set key=value": "generic syntax in the Jobs section's argument list, names no real key",
}


@dataclass(frozen=True)
class Command:
    """One README command (a fenced shell line, backslash continuations joined) or inline code span
    that passes ``--set``: where it is, which config it loads, and its overrides."""

    line: int
    text: str
    config: str | None  # None = the schema's defaults (what the CLI does without --config)
    overrides: tuple[str, ...]


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _fenced_lines() -> list[tuple[int, str]]:
    """Logical lines of every fenced block (trailing backslash joins the next line)."""
    out = []
    for block in FENCE.finditer(README):
        first = _line_of(README, block.start(1))
        pending, start = "", None
        for i, raw in enumerate(block.group(1).splitlines()):
            start = first + i if start is None else start
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            out.append((start, pending + raw))
            pending, start = "", None
    return out


def _inline_spans() -> list[tuple[int, str]]:
    """Inline code spans outside fenced blocks (a wrapped span becomes one line)."""
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), README)  # keep line numbers
    return [(_line_of(prose, m.start()), " ".join(m.group(1).split())) for m in SPAN.finditer(prose)]


def _scan(tokens: list[str]) -> tuple[str | None, list[str]]:
    """``--config`` and every ``--set`` value of a command that is not the raydistill CLI."""
    config, overrides = None, []
    for i, tok in enumerate(tokens):
        if tok in ("--set", "--config"):
            assert i + 1 < len(tokens), f"{tok} without a value in {tokens}"
            if tok == "--set":
                overrides.append(tokens[i + 1])
            else:
                config = tokens[i + 1]
        elif tok.startswith("--set="):
            overrides.append(tok.split("=", 1)[1])
    return config, overrides


def _parse(line: int, text: str) -> Command:
    tokens = shlex.split(text, comments=True)
    cli = next((i for i, tok in enumerate(tokens) if os.path.basename(tok) == "raydistill"), None)
    job = next((i for i, tok in enumerate(tokens) if re.fullmatch(r"jobs/\w+\.py", tok)), None)
    if cli is not None or job is not None:
        # The real CLI parser: a flag the CLI does not take fails here (jobs take exactly the CLI's arguments).
        argv = tokens[cli + 1:] if cli is not None else [tokens[job][len("jobs/"):-len(".py")], *tokens[job + 1:]]
        args = build_parser().parse_args(argv)
        config, overrides = args.config, list(args.overrides)
    else:
        # benchmarks/*.py (with their own --config default) and prose spans, which are read as extra
        # flags for the README's running example, configs/digits.yaml.
        config, overrides = _scan(tokens)
        config = config or _benchmark_config(tokens) or DIGITS
    return Command(line, " ".join(text.split()), config, tuple(overrides))


def _benchmark_config(tokens: list[str]) -> str | None:
    """The ``--config`` default of the ``benchmarks/*.py`` script among ``tokens`` (None: no script, or none)."""
    script = next((t for t in tokens if re.fullmatch(r"benchmarks/\w+\.py", t)), None)
    if script is None:
        return None
    found = re.search(r'add_argument\("--config", default=(?:"([^"]+)"|str\(REPO / "configs" / "([^"]+)"\))',
                      (REPO / script).read_text())
    return None if found is None else found.group(1) or f"configs/{found.group(2)}"


def _commands() -> list[Command]:
    found = [_parse(line, text) for line, text in _fenced_lines() + _inline_spans() if re.search(r"--set\b", text)]
    return sorted(found, key=lambda c: c.line)


COMMANDS = _commands()
CHECKED = [c for c in COMMANDS if c.text not in NOT_CHECKABLE]


def _fill_placeholders(override: str) -> str:
    """``distill.teachers=[{artifact: runs/artifacts/teacher/<t0>}]`` -> ``...teacher/placeholder-t0``.

    Only values may hold ``<...>`` placeholders (paths the reader substitutes); a key may not."""
    key, sep, value = override.partition("=")
    assert sep and "<" not in key, f"override {override!r} must be section.key=value with a literal key"
    return f"{key}={PLACEHOLDER.sub(lambda m: f'placeholder-{m.group(1)}', value)}"


def _subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "stage")
    return set(action.choices)


def test_every_raydistill_command_in_the_readme_exists():
    used = set(re.findall(r"(?<![\[\w])raydistill ([a-z][a-z-]+)", README))
    assert used, "README shows no raydistill commands"
    assert used <= _subcommands(), f"README uses unknown subcommands: {used - _subcommands()}"


def test_every_config_file_in_the_readme_loads():
    configs = set(re.findall(r"(configs/[\w.-]+\.yaml)", README))
    assert "configs/digits.yaml" in configs
    for path in configs:
        load_config(REPO / path)


def test_every_set_in_the_readme_is_parsed_and_either_checked_or_allow_listed():
    # Nothing is skipped silently: every `--set` the README shows belongs to a command found above.
    in_readme = len(re.findall(r"--set\b", README))
    parsed = sum(len(c.overrides) for c in COMMANDS)
    assert parsed == in_readme, f"README has {in_readme} --set, the parser found {parsed}"
    texts = {c.text for c in COMMANDS}
    stale = set(NOT_CHECKABLE) - texts
    assert not stale, f"allow-listed commands no longer in the README: {stale}"
    # The quoted, YAML-valued overrides (the risky ones) are among those checked.
    keys = {o.split("=", 1)[0] for c in CHECKED for o in c.overrides}
    assert {"tune.temperature", "tune.alpha", "tune.lr", "teacher.models", "distill.teachers"} <= keys


@pytest.mark.parametrize("command", CHECKED, ids=lambda c: f"L{c.line}")
def test_every_override_in_the_readme_loads(command):
    config = REPO / command.config if command.config is not None else None
    cfg = load_config(config, [_fill_placeholders(o) for o in command.overrides])
    # Spot-check that quoted YAML values arrive as the structures the README means, not strings.
    for override in command.overrides:
        key = override.split("=", 1)[0]
        if key in ("tune.temperature", "tune.alpha", "tune.lr", "teacher.seeds", "teacher.models", "distill.teachers"):
            section, name = key.split(".")
            assert isinstance(getattr(getattr(cfg, section), name), list), f"line {command.line}: {key} is not a list"


def test_allow_listed_commands_really_cannot_load():
    # An allow-list entry that loads fine should be checked instead of excused.
    from raydistill.core.config import ConfigError

    for command in COMMANDS:
        if command.text in NOT_CHECKABLE:
            with pytest.raises(ConfigError):
                load_config(REPO / command.config if command.config else None,
                            [_fill_placeholders(o) for o in command.overrides])


def test_make_demo_and_make_test_run_what_the_readme_promises():
    makefile = (REPO / "Makefile").read_text()
    demo = makefile.split("\ndemo:")[1].split("\n\n")[0]
    assert "raydistill pipeline --config $(CONFIG)" in demo
    assert "CONFIG  ?= configs/digits.yaml" in makefile
    assert "pytest" in makefile.split("\ntest:")[1].split("\n\n")[0]
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make demo" in README and "make test" in README


def test_make_tests_two_tiers_run_every_test_exactly_once():
    # `make test` runs two pytest processes with complementary -m expressions; for every combination of
    # the markers, exactly one of them selects the test (pytest's own expression evaluator decides).
    import itertools

    from _pytest.mark.expression import Expression

    recipe = (REPO / "Makefile").read_text().split("\ntest:")[1].split("\n\n")[0]
    tiers = re.findall(r'pytest [^\n]*?-m "([^"]+)" tests', recipe)
    assert len(tiers) == 2, recipe
    markers = [m.split(":")[0].strip() for m in tomllib.loads((REPO / "pyproject.toml").read_text())[
        "tool"]["pytest"]["ini_options"]["markers"]]
    assert set(markers) == {"ray", "cluster"}
    for chosen in itertools.chain.from_iterable(itertools.combinations(markers, k) for k in range(3)):
        picked = [Expression.compile(tier).evaluate(lambda name, **kw: name in chosen) for tier in tiers]
        assert picked.count(True) == 1, (chosen, tiers, picked)
    assert "ray_rc -eq 0 -a $$unit_rc -eq 0" in recipe  # either tier failing fails make test


def test_every_benchmark_script_in_the_readme_exists_and_takes_its_flags():
    scripts = set(re.findall(r"benchmarks/(\w+\.py)", README))
    assert "digits_accuracy.py" in scripts and "serve_load.py" in scripts
    for name in scripts:
        source = (REPO / "benchmarks" / name).read_text()
        for flag in set(re.findall(rf"benchmarks/{re.escape(name)}((?: --?[\w-]+(?: [\w.=/{{}}:\[\]-]+)*)*)", README)):
            for option in re.findall(r"--([\w-]+)", flag):
                if option != "set":
                    assert f'"--{option}"' in source, f"README runs {name} with --{option}, which it does not take"


def test_every_benchmark_script_imports_with_the_current_package():
    # Found by review: benchmarks/federated_scale.py imported pool_size from where it no longer lives,
    # so the README's command failed at once. Import each script (definitions only: every one guards
    # its run with __main__; helpers the scripts import start with "_") in one fresh interpreter.
    scripts = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))
    assert all('if __name__ == "__main__":' in p.read_text() for p in scripts)
    code = ("import importlib.util, sys\n"
            f"sys.path.insert(0, {str(REPO / 'benchmarks')!r})\n"
            f"for path in {[str(p) for p in scripts]!r}:\n"
            "    spec = importlib.util.spec_from_file_location('bench_' + path.rsplit('/', 1)[1][:-3], path)\n"
            "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "print('imported')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr[-3000:]


BAD_INPUT = [("digits_accuracy.py", ["--set", "distill.temperature=-1"], "distill.temperature"),
             ("digits_kd_cv.py", ["--set", "distill.alpha=2"], "distill.alpha"),
             ("ensemble_vs_single.py", ["--set", "run.seed=-3"], "run.seed"),
             ("federated_robust.py", ["--set", "federated.rounds=0"], "federated.rounds"),
             ("kd_fashion.py", ["--set", "distill.temperature=-1"], "distill.temperature"),
             ("kd_methods.py", ["--set", "distill.lr=-1"], "distill.lr"),
             ("kd_methods.py", ["--alone-augment", "{flip: true}"], "distill.augment.flip"),
             ("kd_methods.py", ["--views-augment", "{flip: true}"], "distill.augment.flip"),
             ("kd_methods.py", ["--views-epochs", "0"], "distill.epochs"),
             ("kd_methods.py", ["--workers", "0"], "--workers"),
             ("kd_val_views.py", ["--workers", "0"], "--workers"),
             ("kd_val_views.py", ["--threads", "0"], "--threads"),
             ("kd_val_views.py", ["--seeds", "1", "1"], "--seeds"),
             ("kd_val_views.py", ["--teacher-cache", "README.md"], "not a folder"),
             ("kd_val_views.py", ["--alone", "no colon"], "--alone 'no colon'"),
             ("kd_val_views.py", ["--alone", "a: distill.epochs=0"], "distill.epochs"),
             ("kd_val_views.py", ["--kd", "k: distill.mode=online", "--alone", "a: distill.epochs=3"], "cached views"),
             ("kd_val_views.py", ["--kd", "k: distill.mode=cached; distill.cached_views=2"], "--alone row"),
             ("kd_val_views.py", ["--alone", "a: teacher.epochs=3"], "teacher.*"),
             ("kd_val_views.py", ["--alone", "a: distill.epochs=3", "--alone", "a: distill.epochs=4"], "two rows"),
             ("kd_val_views.py", ["--set", "data.val_fraction=0", "--alone", "a: distill.epochs=3"],
              "data.val_fraction"),
             ("kd_val_views.py", ["--alone", "a: distill.augment={translate: 20}"], "distill.augment.translate: 20 px"),
             ("kd_methods.py", ["--views-augment", "{hflip: true, cutout: 28}"],
              "distill.augment.cutout: squares of 28"),
             ("kd_methods.py", ["--set", "teacher.model.name=resnet999"], "teacher.model.name: unknown model"),
             ("kd_val.py", ["--config", "configs/digits.yaml", "--set", "distill.epochs=0"], "distill.epochs"),
             ("tune_asha.py", ["--set", "tune.num_samples=0"], "tune.num_samples"),
             ("tune_asha.py", ["--plain", "1"], "--plain"),  # digits: no IDX files for the plain script
             ("tune_asha.py", ["--plain", "1", "--set", "data.name=fashion_mnist", "--set",  # fine but for the views:
               "data.root=../shared/datasets/fashion-mnist", "--set", "distill.cached_views=4",  # the plain script has
               "--set", "distill.augment={cutout: 4}"], "--plain"),  # no augmentation, no cached views
             ("plain_augment.py", ["--fashion-root", "no/such/dir"], "no/such/dir"),
             ("kd_plain_script.py", ["--fashion-root", "no/such/dir"], "no/such/dir"),
             ("kd_plain_script.py", ["--epochs", "0"], "--epochs"),
             ("kd_plain_script.py", ["--mixup", "1.5"], "--mixup"),
             ("federated_scale.py", ["--fashion-root", "no/such/dir"], "no/such/dir"),
             ("distill_throughput.py", ["--dataset", "imagenet"], "imagenet"),
             ("teacher_layout.py", ["--images", "0"], "--images"),
             ("teacher_layout.py", ["--fashion-root", "no/such/dir"], "no/such/dir"),
             ("plain_augment.py", ["--passes", "0"], "--passes"),
             ("digits_kd_cv.py", ["--folds", "1"], "--folds"),
             ("tune_asha.py", ["--repeats", "0"], "--repeats"),
             ("ensemble_vs_single.py", ["--set", "distill.mode=online", "--set", "distill.augment={translate: 1}"],
              "this benchmark caches each teacher's logits")]


def test_a_benchmark_given_bad_input_names_it_and_exits_2_without_a_traceback():
    # The README runs these scripts with --config/--set/--fashion-root; a mistake there is the user's, so
    # each ends as the CLI does (cli.commands.run_script), before any training or Ray: run each as
    # __main__ in one fresh interpreter, its stderr captured on its own.
    code = ("import contextlib, io, json, runpy, sys, traceback\n"
            f"cases = {[(s, a) for s, a, _ in BAD_INPUT]!r}\n"
            "out = []\n"
            "sys.path.insert(0, 'benchmarks')  # as `python benchmarks/<script>` has it: helpers beside the script\n"
            "for script, args in cases:\n"
            "    sys.argv = ['benchmarks/' + script, *args]\n"
            "    err, code = io.StringIO(), None\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        try:\n"
            "            runpy.run_path('benchmarks/' + script, run_name='__main__')\n"
            "        except SystemExit as exc:\n"
            "            code = exc.code\n"
            "        except BaseException:\n"
            "            traceback.print_exc()\n"
            "    out.append([code, err.getvalue()])\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO / "platform")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (script, _, named), (code, err) in zip(BAD_INPUT, results, strict=True):
        assert code == 2, (script, err[-3000:])
        assert "\nerror: " in "\n" + err and named in err and "Traceback" not in err, (script, err)


@pytest.mark.parametrize("kd, met", [((0.9238, 0.9193, 0.9202), False),  # the README's 120-epoch table: +0.98, +0.99
                                     ((0.9225, 0.9205, 0.9210), True)])  # its 180-epoch table: +1.07 on the worst seed
def test_the_kd_methods_goal_line_needs_one_point_on_the_mean_and_every_seed_over_the_best_alone_row(kd, met):
    # The README quotes this line as the verdict. Gaps by hand against the best alone row on the
    # mean ("student alone, flips" here: 0.9094 > 0.9073 > 0.9043), printed under the table's name for it.
    alone, aug, flips = (0.9063, 0.9074, 0.9083), (0.9023, 0.9023, 0.9084), (0.9085, 0.9095, 0.9103)
    results = [{"alone": a, "alone+aug": b, "alone+other": c, "kd views=8": k}
               for a, b, c, k in zip(alone, aug, flips, kd)]
    line = load_benchmark("kd_methods").verdict(results, "flips")
    gaps = [100 * (k - c) for k, c in zip(kd, flips)]
    mean = sum(gaps) / 3
    assert f"kd views=8 vs student alone, flips: mean {mean:+.2f} pt, per seed " in line, line
    assert " ".join(f"{g:+.2f}" for g in gaps) in line
    assert line.endswith(": met (student alone, flips 0.9094 ± 0.0009)") == met, line
    assert ("NOT met" in line) != met


def test_the_teacher_cache_key_is_unchanged_by_cutout_off_and_changed_by_cutout_on():
    # Found when augment.cutout was added: the key hashed every recipe field, so the new field (off) gave
    # every teacher cached before it a new key, and the README's --teacher-cache commands retrained them.
    rows = load_benchmark("_kd_rows")
    fashion = str(REPO / "configs" / "fashion_mnist.yaml")
    off = rows._recipe_key(load_config(fashion, []).teacher)
    assert off["augment"] == {"translate": 2, "hflip": True}  # the fields (and values) before cutout existed
    on = rows._recipe_key(load_config(fashion, ["teacher.augment.cutout=6"]).teacher)
    assert on["augment"] == {"translate": 2, "hflip": True, "cutout": 6}
    assert {k: v for k, v in on.items() if k != "augment"} == {k: v for k, v in off.items() if k != "augment"}


def test_kd_val_views_scores_each_row_against_the_best_alone_row_of_the_same_seed():
    # Two alone rows that each win one seed: the kd row's gain per seed is over the better one of that seed.
    bench = load_benchmark("kd_val_views")
    alone_a, alone_b, kd = (0.9100, 0.9150), (0.9120, 0.9110), (0.9250, 0.9240)
    results = {"a": [{"val": v, "train": 0.95, "s": 10.0} for v in alone_a],
               "b": [{"val": v, "train": 0.96, "s": 12.0} for v in alone_b],
               "kd": [{"val": v, "train": 0.97, "s": 600.0} for v in kd]}
    teachers = [{"teacher": 0.9357, "teacher_s": 1100.0}, {"teacher": 0.9387, "teacher_s": 1200.0}]
    text = bench.table(results, teachers, [0, 1], {"a": "alone", "b": "alone", "kd": "kd"})
    gains = [100 * (0.9250 - 0.9120), 100 * (0.9240 - 0.9150)]  # +1.30 (b wins seed 0), +0.90 (a wins seed 1)
    line = next(row for row in text.splitlines() if row.startswith("| kd |"))
    assert f"| {sum(kd) / 2:.4f} ± {abs(kd[0] - kd[1]) / 2 ** 0.5:.4f} | 0.9250 0.9240 |" in line, line
    assert f"| {sum(gains) / 2:+.2f} pt ({gains[0]:+.2f} {gains[1]:+.2f}) | 0.9700 | 600 s |" in line, line
    assert "| teacher | 0.9372 ± 0.0021 | 0.9357 0.9387 |" in text


def test_kd_val_views_rows_share_a_view_cache_exactly_when_what_it_holds_is_the_same():
    # The alpha probe built the same 8-view cache (teacher passes over 54,000 images) once per row; rows that
    # differ only in how they train on it must share it, rows that differ in what it holds must not.
    bench = load_benchmark("kd_val_views")
    fashion = str(REPO / "configs" / "fashion_mnist.yaml")
    base = ["distill.mode=cached", "distill.cached_views=8", "distill.augment={hflip: true, mixup: 0.5}"]
    key = lambda *extra: bench.cache_key(load_config(fashion, [*base, *extra]).distill)  # noqa: E731
    assert key() == key("distill.alpha=0.1") == key("distill.epochs=3", "distill.temperature=2")
    assert len({key(), key("distill.cached_views=16"), key("distill.augment={hflip: true, mixup: 0.25}"),
                key("distill.cache_topk=3")}) == 4
    # Found running the fc-64 probe: an alone row with the kd row's distill section got the kd row's cache,
    # so it trained kd and printed the kd row's accuracies as the student alone's
    same, alpha = load_config(fashion, base), load_config(fashion, [*base, "distill.alpha=0.1"])
    rows = [("kd", "kd", [], same), ("kd a0.1", "kd", [], alpha), ("alone", "alone", [], same)]

    class Jobs:  # records what main() would send to Ray: (function name, arguments) -> a handle
        def __init__(self):
            self.sent = []

        def submit(self, fn, *args):
            self.sent.append((fn.__name__, args))
            return len(self.sent) - 1

    jobs = Jobs()
    handles = bench.submit_rows(jobs, rows, ["bundle0", "bundle1"], [0, 1], ["teacher0", "teacher1"])
    builds = {args[2]: handle for handle, (name, args) in enumerate(jobs.sent) if name == "cache_job"}
    assert sorted(builds) == [0, 1]  # one cache build per seed, shared by both kd rows
    cache_of = lambda row: [jobs.sent[h][1][3] for h in handles[row]]  # noqa: E731  (student_val's 4th argument)
    assert cache_of("kd") == cache_of("kd a0.1") == [builds[0], builds[1]]
    assert cache_of("alone") == [None, None]


def test_kd_methods_runs_dist_on_request_only_with_the_method_named_and_the_logits_shared():
    bench = load_benchmark("kd_methods")
    cfg = load_config(str(REPO / "configs" / "fashion_mnist.yaml"), [])

    class Jobs:  # records what main() would send to Ray: (function name, arguments, keywords) -> a handle
        def __init__(self):
            self.sent = []

        def submit(self, fn, *args, **kwargs):
            self.sent.append((fn.__name__, args, kwargs))
            return len(self.sent) - 1

    def methods(rows=None) -> list:
        jobs = Jobs()
        extra = {} if rows is None else {"rows": rows}
        bench.submit_rows(jobs, cfg, ["bundle0"], [0], ["teacher0"], cfg.distill, **extra)
        logits = [h for h, (name, *_) in enumerate(jobs.sent) if name == "logits_job"]
        sent = [(kw.get("method"), kw.get("logits")) for name, _, kw in jobs.sent if name == "row_job"]
        return [m for m, _ in sent if m], {source for m, source in sent if m and m != "fitnet"} == set(logits)

    default, shared = methods()
    assert "dist" not in default and "kd" in default and shared  # the rows by default
    chosen, shared = methods(["dist", "dist+lskd", "kd"])
    assert chosen == ["kd", "dist", "dist+lskd"] and shared  # one teacher-logits job for every logit method


def test_the_plain_scripts_mixup_mixes_a_fraction_of_rows_with_batch_partners_and_mixes_labels_alike():
    # Each image a distinct one-hot pixel, so a mixed image names its weights: lam on its own pixel, 1 - lam on
    # the partner's; the label must be lam * onehot(y_i) + (1 - lam) * onehot(y_j) with the same lam and j.
    import torch
    bench = load_benchmark("kd_plain_script")
    n, rate = 400, 0.5
    x = torch.eye(n * 4)[: n].reshape(n, 1, 40, 40)  # row i lights pixel i
    y = torch.arange(n) % 10
    out, label = bench.plain_mix(x, y, torch.Generator().manual_seed(3), rate)
    flat = out.reshape(n, -1)[:, :n]
    own = flat.diagonal()
    mixed = own < 1
    for i in range(n):
        if mixed[i]:
            j = int(torch.argmax(torch.where(torch.arange(n) == i, -1.0, flat[i])))
            assert abs(float(flat[i, j]) - (1 - float(own[i]))) < 1e-6 and flat[i].count_nonzero() <= 2
            want = torch.zeros(10)
            want[y[i]] += own[i]
            want[y[j]] += 1 - own[i]
        else:
            assert flat[i].count_nonzero() == 1  # unmixed, or mixed with itself: its own image
            want = torch.nn.functional.one_hot(y[i], 10).float()
        assert torch.allclose(label[i], want, atol=1e-6), (i, label[i], want)
    # the rate: binomial(400, 0.5) mixed rows (a partner equal to the row itself counts as unmixed here)
    assert abs(int(mixed.sum()) - n * rate) < 4 * (n * rate * (1 - rate)) ** 0.5
    # lam ~ U(0, 1) on the mixed rows: mean 1/2 and standard deviation 1/sqrt(12), each within 4 standard errors
    lam = own[mixed].double()
    m = len(lam)
    assert abs(float(lam.mean()) - 0.5) < 4 * (1 / 12 / m) ** 0.5
    # var(s^2) ~ (mu4 - sigma^4) / m = (1/80 - 1/144) / m = 1 / (180 m), so var(s) ~ that / (4 sigma^2) = 1 / (60 m)
    assert abs(float(lam.std()) - 12 ** -0.5) < 4 * (1 / 60 / m) ** 0.5
    assert torch.allclose(label.sum(1), torch.ones(n))
