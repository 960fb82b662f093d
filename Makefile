# Two commands do everything on a fresh machine (each sets up .venv first, quickly when done already):
#   make demo   the demo pipeline on the bundled tiny model (notebooks 01 -> 07, headless, into runs/)
#   make test   lint + the whole test suite (what CI runs; before you stop)
# While developing: make check   lint + the fast tier (tests not marked slow), on every change
# Cluster builds of torch: TORCH_SPEC=skip VENV_FLAGS=--system-site-packages make setup  (see README)
VENV ?= .venv
PYTEST_ARGS ?= --durations=30
PY := $(VENV)/bin/python
# make test runs in one process; the Slurm module's jobs run beside the rest of the suite (tests/conftest.py, Lane)
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test check lint format bench
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m workshop_lib demo $(if $(RUN),--name $(RUN))

test: setup
	@bash scripts/install_slurm.sh
	@bash scripts/install_browser.sh
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

check: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

bench: setup
	$(PY) benchmarks/data_throughput.py
