# The two commands a user needs: `make demo` and `make test`. Everything else is a helper.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
CONFIG  ?= configs/digits.yaml
# Ray writes sockets and logs under RAY_TMPDIR; keep it short (unix socket paths are limited).
export RAY_TMPDIR ?= /tmp/raydistill-ray
export TMPDIR ?= /tmp

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	mkdir -p $(RAY_TMPDIR)
	$(VENV)/bin/raydistill pipeline --config $(CONFIG)

test: install
	mkdir -p $(RAY_TMPDIR)
	$(PY) -m pytest -q -rA --durations=15 tests

test-fast: install
	$(PY) -m pytest -q -m "not ray and not cluster" tests

bench: install
	$(PY) benchmarks/distill_throughput.py

clean:
	rm -rf runs .pytest_cache
