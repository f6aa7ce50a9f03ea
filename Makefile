# aifinops: `make run` starts the product, `make test` runs every check.
# Both create .venv, install what they need and fetch the default models by themselves.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# onnxruntime flavour: cpu (default) or gpu. The two packages overwrite each other: never both.
FLAVOUR ?= cpu
# llama.cpp build flags. GPU boxes: CMAKE_ARGS="-DGGML_CUDA=on"; portable bundles: -DGGML_NATIVE=OFF
CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
# Where `make test` keeps the verified model files between runs.
TEST_MODELS := $(CURDIR)/.cache/models

OTHER_FLAVOUR := $(if $(filter gpu,$(FLAVOUR)),onnxruntime,onnxruntime-gpu)

.PHONY: run test setup setup-gui setup-test models lint pytest bench clean

# With a display: the tray, which finds or starts the agent. Without one (a server): the agent.
run: setup-gui
	$(BIN)/aifinops models pull
	if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || [ "$$(uname)" = Darwin ]; then $(BIN)/aifinops-tray; else $(BIN)/aifinops agent run; fi

test: setup-test
	AIFINOPS_MODELS__DIR=$(TEST_MODELS) $(BIN)/aifinops models pull
	$(MAKE) lint
	$(MAKE) pytest

setup: $(VENV)/.installed-$(FLAVOUR)
setup-gui: $(VENV)/.installed-$(FLAVOUR)-gui
setup-test: $(VENV)/.installed-$(FLAVOUR)-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel

$(VENV)/.installed-$(FLAVOUR): pyproject.toml | $(BIN)/python
	-$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_FLAVOUR) 2>/dev/null
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[$(FLAVOUR)]'
	touch $@

# The tray's Qt libraries on top of the agent: `make run` starts both.
$(VENV)/.installed-$(FLAVOUR)-gui: pyproject.toml | $(BIN)/python
	-$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_FLAVOUR) 2>/dev/null
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[$(FLAVOUR),gui]'
	touch $(VENV)/.installed-$(FLAVOUR) $@

$(VENV)/.installed-$(FLAVOUR)-test: pyproject.toml | $(BIN)/python
	-$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_FLAVOUR) 2>/dev/null
	CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[$(FLAVOUR),test]'
	touch $(VENV)/.installed-$(FLAVOUR) $@

lint: setup-test
	$(BIN)/ruff check agent native tests bench gui
	$(BIN)/ruff format --check gui tests/gui
	$(BIN)/mypy

pytest: setup-test
	AIFINOPS_MODELS__DIR=$(TEST_MODELS) $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup-test
	AIFINOPS_MODELS__DIR=$(TEST_MODELS) $(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
