# One entry point. `make setup` is idempotent: it (re)installs only when
# pyproject.toml changed. torch goes in first and pinned, so pip never
# reaches for the multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test lint demo bench bench-ledger quality clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -c "import cv2, mediapipe, torch, prefect, mlflow, dvc, onnxruntime, librosa"
	touch $(STAMP)

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check synctalk stages flows tests benchmarks scripts
	$(VENV)/bin/ruff format --check synctalk stages flows tests benchmarks scripts

demo: setup
	$(VENV)/bin/synctalk demo

bench: setup
	$(PY) benchmarks/models.py
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/render.py
	$(PY) benchmarks/render.py --long-audio-minutes 10 --precision fp32
	$(PY) benchmarks/audio_memory.py
	$(PY) benchmarks/ledger.py

# The renders ledger at 100,000 records: one append and one lookup, target < 20 ms each.
bench-ledger: setup
	$(PY) benchmarks/ledger.py

# The lip-follow yardstick (issue 14): trains lieu_address_45s with the cpu
# preset (about 30 minutes on 2 cores), drives it with the other clips.
quality: setup
	$(PY) benchmarks/quality.py --out quality-report

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
