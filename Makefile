# lorasynth: `make demo` and `make test` set everything up on a fresh machine (Python 3.11 + make).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependency pins change; torch is pinned to the 2.13.0 CPU wheel.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# CLIP's BPE vocabulary ships in open-clip-torch; its torchvision dependency breaks beside the
	# pinned torch, and lorasynth only reads the vocabulary file, so it is installed without deps.
	$(BIN)/python -m pip install --quiet --no-deps open-clip-torch==3.3.0
	# Real photos of one person several times, for the face tests: the test images of the
	# face_recognition 1.3.0 source package (MIT), unpacked into the venv; nothing is installed.
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: -d $(VENV)/share/sdists face_recognition==1.3.0
	mkdir -p $(VENV)/share/face_recognition_test_images
	tar -xzf $(VENV)/share/sdists/face_recognition-1.3.0.tar.gz -C $(VENV)/share/face_recognition_test_images --strip-components=3 face_recognition-1.3.0/tests/test_images
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lorasynth demo --out demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) demo demo-out .pytest_cache .ruff_cache
