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
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/make_demo_data.py demo
	$(VENV)/bin/texttune train examples/demo.yaml
	$(VENV)/bin/texttune cv examples/demo.yaml --set cv.folds=3 --set output.dir=demo/cv
	$(VENV)/bin/texttune predict demo/cv --input demo/test.csv --output demo/submission.csv
	$(VENV)/bin/texttune predict demo/model --text "A warm, funny and moving film."

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) demo texttune-runs
