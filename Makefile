# Quick start: `make run` opens the studio on the demo; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run demo test test-fast bench bench-peers screenshots package clean

setup: $(STAMP)

# torch is pinned by constraints.txt: an unpinned torch pulls several GB of CUDA packages.
$(STAMP): pyproject.toml constraints.txt Makefile packaging/litert-converter.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,edge,search]"
	# onnx2torch (ONNX -> torch for the training passes) declares torchvision, whose wheel
	# here is broken and which it needs for two ops only; --no-deps keeps it out.
	$(BIN)/pip install --quiet --no-deps "onnx2torch>=1.5,<2"
	# the LiteRT converter (.tflite) without the dependency that would downgrade pydantic: see the file
	$(BIN)/pip install --quiet --no-deps -r packaging/litert-converter.txt
	touch $(STAMP)

run: setup
	$(BIN)/studio

demo: setup
	$(BIN)/studio demo

# Both cores (pytest-xdist): the whole suite, slow tests included, in ~10 min on an idle 2-core machine.
test: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -n 2 --durations=15

test-fast: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -n 2 -m "not slow"

bench: setup bench-peers
	$(BIN)/python -m benchmarks.run

# The peers the benchmark compares with (never studio dependencies). onnx-neural-compressor pins
# numpy<2, so it goes into its own folder without its numpy pin (its other needs with numpy held
# at the studio's version) and runs in a child process with that folder first on its path.
INC := benchmarks/.peers/inc
bench-peers: setup
	$(BIN)/pip install --quiet -c constraints.txt -r benchmarks/requirements-peers.txt
	test -d $(INC)/onnx_neural_compressor || ( \
	  $(BIN)/pip install --quiet --no-deps --target $(INC) onnx-neural-compressor==1.0 && \
	  $(BIN)/python -c "import numpy; print('numpy==' + numpy.__version__)" > benchmarks/.peers/numpy-pin.txt && \
	  $(BIN)/pip install --quiet -c constraints.txt -c benchmarks/.peers/numpy-pin.txt --target $(INC) \
	    transformers onnxruntime-extensions py-cpuinfo prettytable psutil )

screenshots: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/python packaging/screenshots.py

package: setup
	$(BIN)/pip install --quiet -c constraints.txt -e ".[package]"
	$(BIN)/pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/studio.spec

clean:
	rm -rf $(VENV) build dist .pytest_cache
