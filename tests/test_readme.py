"""The README cannot rot: its commands name real subcommands, its overrides and configs load,
and `make demo` / `make test` run what the README says (no Ray)."""
import re

import pytest

from raydistill.cli.commands import build_parser
from raydistill.core.config import load_config

from conftest import REPO

README = (REPO / "README.md").read_text()


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


@pytest.mark.parametrize("override", sorted(set(re.findall(r"--set ([\w.]+=[^\s`\\]+)", README))))
def test_every_override_in_the_readme_is_valid(override):
    if "<" in override or "." not in override.split("=")[0]:  # placeholders: data.root=<dir>, key=value
        return
    load_config(REPO / "configs" / "digits.yaml", [override])


def test_make_demo_and_make_test_run_what_the_readme_promises():
    makefile = (REPO / "Makefile").read_text()
    demo = makefile.split("\ndemo:")[1].split("\n\n")[0]
    assert "raydistill pipeline --config $(CONFIG)" in demo
    assert "CONFIG  ?= configs/digits.yaml" in makefile
    assert "pytest" in makefile.split("\ntest:")[1].split("\n\n")[0]
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make demo" in README and "make test" in README


def test_every_benchmark_script_in_the_readme_exists_and_takes_its_flags():
    scripts = set(re.findall(r"benchmarks/(\w+\.py)", README))
    assert "digits_accuracy.py" in scripts and "serve_load.py" in scripts
    for name in scripts:
        source = (REPO / "benchmarks" / name).read_text()
        for flag in set(re.findall(rf"benchmarks/{re.escape(name)}((?: --?[\w-]+(?: [\w.=/{{}}:\[\]-]+)*)*)", README)):
            for option in re.findall(r"--([\w-]+)", flag):
                if option != "set":
                    assert f'"--{option}"' in source, f"README runs {name} with --{option}, which it does not take"
