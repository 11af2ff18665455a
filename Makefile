# Two commands on a fresh machine:
#   make book   install everything into .venv, then build the HTML book into _build/html
#   make test   install the same, then run the unit tests (with and without Triton), every
#               notebook (nbval, as this CPU and as a CPU without AVX2 computes), the book
#               build and the browser test
# Both need only python3 (3.11 or newer) with venv; every package comes pinned from
# requirements.txt. `make test TORCH=cpu` takes torch from PyTorch's CPU-only wheel index.
# GNU make and a POSIX shell (Linux, macOS, or WSL on Windows).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# A plain message, not a pip resolution error, when the Python is too old or missing.
PY_VERSION := $(shell $(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null)
ifneq ($(shell $(PYTHON) -c 'import sys; print(int(sys.version_info >= (3, 11)))' 2>/dev/null),1)
$(error lnorm needs Python 3.11 or newer, but '$(PYTHON)' is $(or $(PY_VERSION),not found). Name another one: make $(MAKECMDGOALS) PYTHON=python3.12)
endif

# Which torch build to install. Empty (the default): whatever pip's configured sources give for
# the pin in requirements.txt; on Linux x86-64 PyPI's wheel is the CUDA build, which pulls about
# 3 GB of nvidia-* wheels. cpu: PyTorch's CPU-only wheel index, about 200 MB and no nvidia-* wheel.
TORCH ?=
ifneq ($(filter-out cpu,$(TORCH)),)
$(error TORCH=$(TORCH) is not a torch build this Makefile knows: leave it empty, or TORCH=cpu)
endif
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell sed -n 's/^\(torch==[^ ;]*\).*/\1/p' requirements.txt)
PIP := $(BIN)/python -m pip install -qq --disable-pip-version-check

# .venv remembers the Python and torch build it was made with; with others it is made anew (in
# the recipe, so that `make -n` changes nothing). The stamp's name carries them, so that a change
# of either makes it out of date; it is also rebuilt whenever the pins or the package metadata change.
PY_ID := $(shell $(PYTHON) -c 'import sys; print(sys.version.split()[0], sys.base_prefix)') torch=$(or $(TORCH),default)
STAMP := $(VENV)/.installed-$(shell echo '$(PY_ID)' | cksum | cut -d ' ' -f 1)
NOTEBOOKS := $(sort $(shell find book -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*'))

# How a reader's CPU without AVX2 or AVX-512 computes (an ARM laptop, an older x86): torch's
# portable kernels, NumPy's baseline loops, one thread. NumPy's feature names exist on x86 only.
FOREIGN_CPU := ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 \
	$(if $(filter x86_64 amd64,$(shell uname -m)),NPY_DISABLE_CPU_FEATURES='X86_V3 X86_V4 AVX512_ICL AVX512_SPR')
# The matrix `make portability` runs: vector width (torch and NumPy) by thread count.
PORTABILITY_ENVS := "$(FOREIGN_CPU)" \
	"ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=2" \
	"ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1" "ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=2" \
	"ATEN_CPU_CAPABILITY=avx512 OMP_NUM_THREADS=1" "ATEN_CPU_CAPABILITY=avx512 OMP_NUM_THREADS=2"
NBVAL := $(BIN)/python -m pytest -q --nbval $(NOTEBOOKS) -n 2 --dist loadscope
UNIT  := $(BIN)/python -m pytest -q tests -n 2 --ignore=tests/book
# Python as a machine without Triton runs it (macOS, Windows): `import triton` fails everywhere.
WITHOUT_TRITON := PYTHONPATH=$(CURDIR)/tests/no_triton

.PHONY: book test unit notebooks notebooks-foreign without-triton browser portability lab bench lock lock-check clean

book: $(STAMP)
	$(BIN)/jupyter-book build . --all --warningiserror --keep-going
	@echo "Open the book: _build/html/index.html"

test: unit notebooks notebooks-foreign without-triton book browser

unit: $(STAMP)
	$(UNIT)

# The built book in headless Chromium, offline: formulas rendered, no network, no console
# error, links and images intact, nothing wider than a phone, figures on a light card in dark
# mode. Builds the book first; skipped, saying why, without a Chromium that starts. One process:
# two browsers on two cores are slower than one (43 s against 30 s here).
browser: book
	$(BIN)/python -m pytest -q tests/book

# nbval re-runs every notebook and compares each cell's output with the stored one.
notebooks: $(STAMP)
	$(NBVAL)

# The same, as a reader's machine unlike ours would run it: the stored outputs and every
# claim must hold there too.
notebooks-foreign: $(STAMP)
	env $(FOREIGN_CPU) $(NBVAL)

# The unit tests and every notebook as on a machine without Triton (it has Linux wheels only):
# the Triton tests and the notebook cells tagged needs-triton are skipped, everything else passes.
without-triton: $(STAMP)
	env $(WITHOUT_TRITON) $(UNIT)
	env $(WITHOUT_TRITON) $(NBVAL)

# Unit tests and notebooks under every vector width and thread count this CPU can emulate
# (torch runs a capability the CPU lacks at the best one it has).
portability: $(STAMP)
	@set -e; for vars in $(PORTABILITY_ENVS); do \
	  echo "== $$vars"; \
	  eval "env $$vars $(BIN)/python -m pytest -q tests -n 2 --ignore=tests/book"; \
	  eval "env $$vars $(NBVAL)"; \
	done

lab: $(STAMP)
	$(BIN)/jupyter lab book

# Measures time and memory on this machine and rewrites the CSV that chapter 5 reads;
# re-execute book/05-fast-on-the-cpu.ipynb afterwards so that its text and checks see the new numbers.
bench: $(STAMP)
	$(BIN)/python -m lnorm.bench --csv book/data/bench-cpu.csv

$(STAMP): requirements.txt pyproject.toml
	@if [ -f $(VENV)/.python-id ] && [ "$$(cat $(VENV)/.python-id)" != '$(PY_ID)' ]; then \
	  echo "$(VENV) was made with $$(cat $(VENV)/.python-id), not $(PY_ID): making it anew"; \
	  rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(PIP) --index-url $(TORCH_CPU_INDEX) '$(TORCH_PIN)')
	$(PIP) -r requirements.txt
	$(PIP) --no-deps --no-build-isolation -e .
	echo '$(PY_ID)' > $(VENV)/.python-id
	touch $@

# Re-resolve requirements.in into the exact pins of requirements.txt (needs the package registry).
# The lock must install on Linux (x86-64, aarch64), macOS and WSL, whatever machine made it:
# torch's own CUDA wheels (nvidia-*, cuda-*) are left to torch, which asks for them where it
# needs them; torch's local build label (+cpu, +cu128) is dropped; Triton is marked Linux-only.
# tests/test_install.py fails on a platform-specific pin without a marker.
lock:
	rm -rf /tmp/lnorm-lock && $(PYTHON) -m venv /tmp/lnorm-lock
	/tmp/lnorm-lock/bin/python -m pip install -qq -r requirements.in
	{ echo "# Generated by 'make lock' from requirements.in: every package, pinned. Do not edit by hand."; \
	  /tmp/lnorm-lock/bin/python -m pip freeze --all --exclude-editable \
	  | grep -v -E '^(pip|nvidia-[^=]+|cuda-[^=]+)==' \
	  | sed -e 's/^torch==\([^+]*\)+.*$$/torch==\1/' -e 's/^triton==.*/& ; platform_system == "Linux"/'; \
	} > requirements.txt

# Does every pin of requirements.txt have a wheel for each platform and Python the README lists?
# Asks the package registry (pip's dry run downloads wheels' metadata, installs nothing). Triton,
# Linux-only by its marker, is left out of the macOS and Windows checks.
LOCK_PLATFORMS := "manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64" \
	"manylinux_2_28_aarch64 manylinux_2_17_aarch64 manylinux2014_aarch64" \
	"macosx_14_0_arm64 macosx_11_0_arm64 macosx_10_9_universal2" "win_amd64"
lock-check: $(STAMP)
	@set -e; for py in 3.11.7 3.12 3.13; do for platforms in $(LOCK_PLATFORMS); do \
	  case "$$platforms" in manylinux*) req=requirements.txt;; \
	    *) grep -v '^triton' requirements.txt > /tmp/lnorm-lock-check.txt; req=/tmp/lnorm-lock-check.txt;; esac; \
	  echo "== Python $$py on $$platforms"; \
	  $(BIN)/python -m pip install -q --dry-run --ignore-installed --no-deps --only-binary=:all: \
	    --target /tmp/lnorm-lock-check --python-version $$py \
	    $$(for p in $$platforms; do printf -- '--platform %s ' $$p; done) -r $$req; \
	done; done

clean:
	rm -rf _build .venv
