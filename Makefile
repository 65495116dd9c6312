# uffdctl — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
ARGS   ?=
SOURCES := pyproject.toml setup.py MANIFEST.in $(wildcard cdefs/*) $(shell find uffdctl -name '*.py' -o -name '*.uffd' 2>/dev/null)

.PHONY: help demo test install check bench soak test-vm test-kernels clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s '	'

$(VENV)/.installed: $(SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel cffi
	@# the runtime dependencies first: the build (no isolation) imports click to render the --help index
	@$(PIP) install -q --disable-pip-version-check 'click>=8.1' 'psutil>=5.9'
	@$(PIP) install -q --disable-pip-version-check --no-build-isolation '.[test]'
	@touch $@

install: $(VENV)/.installed ## create .venv and install uffdctl with its test extras

demo: install ## the main job: uffdctl check, then the thread's reproductions
	@scripts/demo.sh $(VENV)

test: install ## run the test suite (ARGS= passes options to pytest)
	@$(VENV)/bin/pytest -q -rs $(ARGS)

check: install ## uffdctl check on this machine
	@$(VENV)/bin/uffdctl check

bench: install ## benchmarks: every fast path against its C reference, side by side (BENCH_ARGS=--json)
	@$(PY) scripts/bench.py $(BENCH_ARGS)

soak: install ## long differential run of the emulator against the kernel
	@UFFDCTL_DIFF_EXAMPLES=$${UFFDCTL_DIFF_EXAMPLES:-20000} $(VENV)/bin/pytest -q tests/test_differential.py $(ARGS)

test-vm: install ## run the soft-dirty tests and reproductions in a stock kernel under QEMU
	@UFFDCTL_VMTEST_KERNEL=$${UFFDCTL_VMTEST_KERNEL:-6.1} scripts/vmtest --venv $(VENV) $(ARGS)

test-kernels: install ## build Debian 6.1 + uffdctl's backport of 931298e103c2 + the RFC reconstruction, boot them, assert the flips
	@scripts/vmtest --venv $(VENV) kernels $(ARGS)

clean: ## remove the venv and build products
	rm -rf $(VENV) build *.egg-info uffdctl/_uffd*.so uffdctl/_uffd.c
