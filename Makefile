# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first: a looser pin would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ray]'
	# tcmalloc: training steps 1.16x faster than with glibc's malloc here (bench/allocators.py); texttune preloads
	# it when present. Best effort (Debian, root); without it texttune falls back to its glibc settings.
	-[ -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] || apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1) || true
	# Headless Chromium screenshots the serving playground in the tests (skipped where it cannot be installed).
	-command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) || true
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/make_demo_data.py demo
	$(VENV)/bin/texttune train examples/demo.yaml
	$(VENV)/bin/texttune cv examples/demo.yaml --set cv.folds=3 --set output.dir=demo/cv
	$(VENV)/bin/texttune predict models:/demo@latest --input demo/test.csv --output demo/submission.csv
	$(VENV)/bin/texttune predict demo/model --text "A warm, funny and moving film."
	$(VENV)/bin/texttune runs --limit 3
	# ONNX and int8, each kept only if it passes its fidelity gate (a refused int8 export is reported, not fatal)
	-$(VENV)/bin/texttune export demo/model --format onnx --quantize int8
	$(PY) examples/serve_once.py models:/demo@latest "A warm, funny and moving film."
	$(PY) examples/serve_once.py demo/model "A dull, tired plot."

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo texttune-runs
