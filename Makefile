# The two commands of the README, and what they stand on.
#   make test   installs what the tests need, then runs the whole suite on the real
#               slapd, libvirtd and guest (the CI runs exactly this)
#   make demo   provbackup's main job end to end: a private directory, libvirtd and
#               guest, the daemon, a backup and a restore, shown with ldapsearch
#   make bench  runs the benchmarks (bench/) and writes docs/performance.md; needs root

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: test demo bench deps clean

deps: $(VENV)/.installed

.deps-debian.stamp: tests/rig/install-deps
	tests/rig/install-deps
	touch $@

$(VENV)/.installed: .deps-debian.stamp setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

demo: deps
	$(PY) -m tests.rig.demo

# e.g. make bench BENCH_ARGS=--quick, or BENCH_ARGS="--only directory"
bench: deps
	$(PY) bench/report.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .deps-debian.stamp .pytest_cache build *.egg-info
