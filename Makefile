# Two commands, each doing its own set-up: `make demo` and `make test`.
#
# The default environment is Python 3.12 with the newest Rubin middleware (constraints.txt).
# `make test` also type-checks and runs the middleware-facing tests in the oldest supported environment,
# Python 3.11 with constraints-oldest.txt. Set PYTHON / OLDEST_PYTHON to use other interpreters.

# The first interpreter of version $(1) among the usual places (pyenv's shims only answer for
# the active pyenv version, so its versions directory is searched too).
find_python = $(shell for p in python$(1) $$HOME/.pyenv/versions/$(1)*/bin/python$(1) \
	/usr/local/bin/python$(1) /usr/bin/python$(1); do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(1)".split("."))))' \
	2>/dev/null && { command -v "$$p" || echo "$$p"; } && break; done)

PYTHON ?= $(call find_python,3.12)
OLDEST_PYTHON ?= $(call find_python,3.11)
VENV := .venv
OLDEST_VENV := .venv-oldest
BIN := $(VENV)/bin
OLDEST_BIN := $(OLDEST_VENV)/bin
PIP_INSTALL := -m pip install --quiet --disable-pip-version-check

.PHONY: demo test test-tools lint clean

define need_python
	@[ -n "$(1)" ] || { echo "error: Python $(2) not found. Install it (for example 'pyenv install $(2)'," \
		"or your distribution's python$(2) package) or name it: make $(3)=/path/to/python$(2)"; exit 1; }
endef

$(BIN)/.installed: pyproject.toml constraints.txt
	$(call need_python,$(PYTHON),3.12,PYTHON)
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python $(PIP_INSTALL) -c constraints.txt -e '.[test]'
	touch $@

$(OLDEST_BIN)/.installed: pyproject.toml constraints-oldest.txt
	$(call need_python,$(OLDEST_PYTHON),3.11,OLDEST_PYTHON)
	$(OLDEST_PYTHON) -m venv --clear $(OLDEST_VENV)
	$(OLDEST_BIN)/python $(PIP_INSTALL) -c constraints-oldest.txt -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/autoproc demo --dir demo-data

# System programs the tests drive for real (Debian packages), installed only when missing:
# systemd-analyze checks the unit files, chromium renders the report page, PostgreSQL's
# server binaries back the Butler registry tests, and a private Slurm cluster (slurm-wlm
# pulls in slurmctld, slurmd and slurm-client; munge authenticates) runs the scale-out tests.
PG_BIN := $(firstword $(wildcard /usr/lib/postgresql/*/bin))
TEST_TOOLS := systemd-analyze=systemd chromium=chromium $(if $(PG_BIN),,initdb=postgresql) \
	slurmctld=slurm-wlm slurmd=slurmd sinfo=slurm-client munged=munge
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%%=*}" >/dev/null 2>&1 || missing="$$missing $${pair#*=}"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

test: $(BIN)/.installed $(OLDEST_BIN)/.installed test-tools
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(OLDEST_BIN)/mypy
	$(BIN)/pytest
	$(OLDEST_BIN)/pytest -m "middleware and not postgres" -p no:cacheprovider

lint: $(BIN)/.installed $(OLDEST_BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(OLDEST_BIN)/mypy

clean:
	rm -rf $(VENV) $(OLDEST_VENV) demo-data .pytest_cache
