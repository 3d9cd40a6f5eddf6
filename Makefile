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

# Two tiers at once: the Ray tests (one Ray runtime, one after another; their cores are idle ~30% of the
# time while Ray starts processes and HTTP waits) and, at nice 19 so it only takes what they leave, the
# Ray-free unit tier. The unit tier's report follows the Ray tier's; either failing fails `make test`.
test: install
	mkdir -p $(RAY_TMPDIR)
	@unit_log=$$(mktemp); \
	nice -n 19 $(PY) -m pytest -q -rA -p no:cacheprovider -m "not ray and not cluster" tests > $$unit_log 2>&1 & unit=$$!; \
	$(PY) -m pytest -q -rA --durations=15 -m "ray or cluster" tests; ray_rc=$$?; \
	wait $$unit; unit_rc=$$?; \
	echo "=== the unit tier (not ray, not cluster), run beside the Ray tier ==="; cat $$unit_log; rm -f $$unit_log; \
	echo "make test: Ray tier exit $$ray_rc, unit tier exit $$unit_rc"; \
	test $$ray_rc -eq 0 -a $$unit_rc -eq 0

test-fast: install
	$(PY) -m pytest -q -m "not ray and not cluster" tests

bench: install
	$(PY) benchmarks/distill_throughput.py

clean:
	rm -rf runs .pytest_cache
