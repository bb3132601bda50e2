# One place for the project's commands. `make setup` then `make test`; `make demo` runs the main job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-fast lint lock clean

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

# ---- the image's lock files (docs/IMAGE.md) ----
# Each image flavour installs exactly these pins, with hashes. Resolved for the flavour's Python and platform (not
# this host's): CPU on Debian bookworm's 3.11, GPU on Ubuntu 20.04's 3.8, both glibc >= 2.28; the build tools
# (pure Python) for 3.8, the older of the two. A re-run keeps the versions already locked unless pyproject.toml no
# longer admits them; `make lock UPGRADE=--upgrade` (or `UPGRADE="--upgrade-package pillow"`) moves them on.
# uv trusts the host's certificate store (UV_SYSTEM_CERTS), where a TLS-inspecting proxy's CA lives.
UPGRADE ?=
LOCK_FLAGS := --python-platform x86_64-manylinux_2_28 --only-binary :all: --generate-hashes
UV_COMPILE := UV_SYSTEM_CERTS=1 UV_PYTHON_DOWNLOADS=never $(VENV)/bin/uv pip compile --quiet $(UPGRADE)

lock: setup
	$(UV_COMPILE) pyproject.toml --extra cpu --python-version 3.11 $(LOCK_FLAGS) -o container/requirements-cpu.lock
	$(UV_COMPILE) pyproject.toml --extra gpu --python-version 3.8 $(LOCK_FLAGS) -o container/requirements-gpu.lock
	$(UV_COMPILE) container/requirements-build.in --python-version 3.8 $(LOCK_FLAGS) \
		-o container/requirements-build.lock

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
