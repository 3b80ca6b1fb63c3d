# Every target that runs code first makes sure .venv exists and holds the package, so a fresh
# clone needs nothing but python3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m crdtim demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks.bench_local $(if $(QUICK),--quick)
	$(PY) -m benchmarks.bench_sync $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) build *.egg-info
