# Every target that runs code first makes sure .venv exists and holds the package, so a fresh
# clone needs nothing but python3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean fuzz faults model

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,http]'
	$(PY) -m pip install --quiet -e '.[browser]' || echo "playwright could not be installed: the browser test will skip"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m crdtim demo

test: $(STAMP)
	$(PY) -m pytest -q

# Types (mypy --strict) and style (ruff) of the package, as configured in pyproject.toml.
lint: $(STAMP) $(VENV)/.lint
	$(PY) -m ruff check crdtim
	$(PY) -m mypy

$(VENV)/.lint: pyproject.toml
	$(PY) -m pip install --quiet -e '.[lint]'
	touch $@

# Long seeded fuzz run of the wire protocol (decoder, session, handshake): INPUTS=, SEED=,
# JOBS=; then, if atheris installed, ATHERIS= coverage-guided runs (default 20000, 0: none).
# Crashes are saved in build/fuzz-crashes/; replay one with tests/fuzz_frames.py --replay.
fuzz: $(STAMP) $(VENV)/.fuzz
	$(PY) tests/fuzz_frames.py $(if $(INPUTS),--inputs $(INPUTS)) $(if $(SEED),--seed $(SEED)) $(if $(JOBS),--jobs $(JOBS))
	$(PY) tests/fuzz_frames.py --atheris $(or $(ATHERIS),20000)

$(VENV)/.fuzz: pyproject.toml
	$(PY) -m pip install --quiet -e '.[fuzz]' || echo "atheris could not be installed: make fuzz runs the seeded fuzzer only"
	touch $@

# The whole suite: figures beside their references, goals, JSON + markdown + PNG plots in
# benchmarks/results/. Automerge is optional (a pre-release): if it does not install, the
# suite says so and runs without it.
bench: $(STAMP) $(VENV)/.bench $(VENV)/.automerge
	$(PY) -m benchmarks $(if $(QUICK),--quick)

$(VENV)/.bench: pyproject.toml
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

$(VENV)/.automerge: pyproject.toml
	$(PY) -m pip install --quiet -e '.[automerge]' || echo "automerge could not be installed: its figures will say so"
	touch $@

# Convergence under faults (specs/faults.md): 10,000 seeded simulation runs, then 5 `crdtim
# serve` processes behind a fault-injecting proxy for 3 minutes. Report on stdout and in
# build/faults.json. SIM_RUNS=, REAL_SECONDS=, SEED= to change them.
faults: $(STAMP)
	mkdir -p build
	$(PY) -m tests.faults --json build/faults.json $(if $(SIM_RUNS),--sim-runs $(SIM_RUNS)) $(if $(REAL_SECONDS),--real-seconds $(REAL_SECONDS)) $(if $(SEED),--seed $(SEED))

# Model check of the anti-entropy protocol (specs/protocol.md §14): installs spin if missing
# (Debian's package), then the real model's checks (0 errors) and each seeded bug (found).
model:
	@command -v spin >/dev/null || apt-get install -y spin || { echo "make model: spin is not installed and apt-get install -y spin failed" >&2; exit 1; }
	@command -v cc >/dev/null || { echo "make model: a C compiler (cc) is needed to compile spin's verifier" >&2; exit 1; }
	$(PYTHON) specs/model/check.py $(if $(WIDE),--wide)

clean:
	rm -rf $(VENV) build *.egg-info
