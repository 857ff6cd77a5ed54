# Quick start: `make run` opens the studio on the demo; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run demo test test-fast bench screenshots package clean

setup: $(STAMP)

# torch is pinned by constraints.txt: an unpinned torch pulls several GB of CUDA packages.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,search]"
	# onnx2torch (ONNX -> torch for the training passes) declares torchvision, whose wheel
	# here is broken and which it needs for two ops only; --no-deps keeps it out.
	$(BIN)/pip install --quiet --no-deps "onnx2torch>=1.5,<2"
	touch $(STAMP)

run: setup
	$(BIN)/studio

demo: setup
	$(BIN)/studio demo

test: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest

test-fast: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python -m benchmarks.run

screenshots: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python packaging/screenshots.py

package: setup
	$(BIN)/pip install --quiet -c constraints.txt -e ".[package]"
	$(BIN)/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/studio.spec

clean:
	rm -rf $(VENV) build dist .pytest_cache
