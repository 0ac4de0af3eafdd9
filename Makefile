# make run | make test | make demo: each creates .venv and installs when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test demo lint install bench image-test clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "status-proxy needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/status-proxy serve

# The tests mostly wait on real servers, so four workers fit on two cores.
test: $(STAMP)
	$(BIN)/pytest -n 4

# make demo PROFILE=new-api: the simulator plays vanilla new-api instead of octopusx.
PROFILE ?= octopusx
demo: $(STAMP)
	$(BIN)/status-proxy demo --profile $(PROFILE)

# Every figure against its reference in the same run; writes bench/results.json.
bench: $(STAMP)
	$(BIN)/python -m bench.run

# Builds the Dockerfile with podman on a local Debian base, runs it, sees a webhook.
# Needs root and Debian's podman, buildah, runc, slirp4netns and debootstrap.
image-test: $(STAMP)
	STATUS_PROXY_IMAGE_TEST=1 $(BIN)/pytest tests/test_image.py

lint: $(STAMP)
	$(BIN)/ruff check service migrations tests bench
	$(BIN)/ruff format --check service migrations tests bench
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
