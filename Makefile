# One place for the project's commands. `make setup` then `make test`; `make demo` runs the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip<25" >/dev/null
	$(PY) -m pip install -e ".[dev]"
	touch $@

# The whole suite, as CI runs it (slow, docker and sdk tests included). pytest's exit code 5 (no tests) is success.
test: setup
	$(PY) -m pytest tests || [ $$? -eq 5 ]

# The fast unit tests only.
test-fast: setup
	$(PY) -m pytest tests -m "not slow and not docker and not sdk" || [ $$? -eq 5 ]

lint: setup
	$(PY) -m ruff check src tests examples scripts
	$(VENV)/bin/vermin --no-tips --target=3.8- --violations src

clean:
	rm -rf $(VENV) build dist src/*.egg-info

# ---- the image (docs/IMAGE.md) ----
# WEIGHTS=bake bakes the ImageNet backbone weights in (needs their download URL reachable; not here).
WEIGHTS ?= skip
.PHONY: base-image image demo sdk-env

# A minimal Debian base made locally with debootstrap (reused when present), for engines without Docker Hub.
base-image:
	docker/make_base_image.sh

# The CPU image, tagged segmaker:cpu. The GPU one: docker/build_image.sh --gpu (docs/IMAGE.md).
image: base-image
	docker/build_image.sh --cpu --weights $(WEIGHTS) --tag segmaker:cpu

# The main job in one command: build, train on local_test/test_dir, serve, predict, overlay.
demo:
	scripts/demo.sh

# The SageMaker Python SDK's own venv (.venv-sdk): it can never share one with mxnet (numpy pins).
sdk-env:
	$(PYTHON) tests/sdk_env.py
