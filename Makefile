# Two commands, each doing its own set-up: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-tools lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/autoproc demo --dir demo-data

# System programs the tests drive for real (Debian packages): systemd-analyze checks the
# unit files, chromium renders the report page, a private Slurm cluster (slurm-wlm pulls in
# slurmctld, slurmd and slurm-client; munge authenticates) runs the scale-out tests.
# Installed only when missing.
TEST_TOOLS := systemd-analyze=systemd chromium=chromium \
	slurmctld=slurm-wlm slurmd=slurmd sinfo=slurm-client munged=munge
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v "$${pair%%=*}" >/dev/null 2>&1 || missing="$$missing $${pair#*=}"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; $(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

test: $(STAMP) test-tools
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-data .pytest_cache
