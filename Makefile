# `make demo` and `make test` set everything up on a fresh machine (a virtualenv in .venv) and run.
VENV ?= .venv
PY := $(VENV)/bin/python
# On the project's machines torch 2.13.0 is a local CPU wheel; elsewhere override, e.g. TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/ctrscale demo --out reports/demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_loader.py
	$(PY) benchmarks/bench_gauc.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_suan.py
	$(PY) benchmarks/bench_sparsectr.py --settings S1 S2 S3 S4
	$(PY) benchmarks/bench_est.py
	$(PY) benchmarks/bench_fat.py
	$(PY) benchmarks/bench_stream.py
	$(PY) benchmarks/bench_serve.py

clean:
	rm -rf $(VENV) reports runs
