# The two commands of the README, and what they stand on.
#   make test   installs what the tests need, then runs the whole suite on the real
#               slapd, libvirtd and guest (the CI runs exactly this)
#   make demo   the end-to-end demo (placeholder until the daemon exists, see README)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo deps clean

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
	@echo "make demo: not implemented yet." >&2
	@echo "The end-to-end demo (private directory, libvirtd and guest; a backup and a" >&2
	@echo "restore) arrives with the daemon itself (issue 6). Until then, 'make test'" >&2
	@echo "runs the real components and 'provbackup check-config' checks a config." >&2
	@exit 2

clean:
	rm -rf $(VENV) .deps-debian.stamp .pytest_cache build *.egg-info
