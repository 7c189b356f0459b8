# Two commands do everything on a fresh machine:
#   make demo   -- set up, then run the whole pipeline on a synthetic dataset
#   make test   -- set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.microact-installed
DEMO_OUT ?= demo_out

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# Order matters: the local CPU torch first, then everything else constrained to it
# (otherwise pip replaces it with a multi-GB CUDA build), then mediapipe without its
# declared dependencies (they would downgrade numpy and overwrite OpenCV).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip || true
	$(PIP) install -q torch==2.13.0 || $(PIP) install -q -c constraints.txt "torch>=2.4"
	$(PIP) install -q -c constraints.txt -e ".[decord,detect,hf,tb,test,onnx]"
	$(PIP) install -q --no-deps mediapipe==0.10.21 || echo "mediapipe unavailable: the crop stage falls back to OpenCV Haar faces"
	$(PY) -c "import microact, torch, av, cv2; print('microact', microact.__version__, '| torch', torch.__version__)"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/microact demo --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(VENV)/bin/microact bench backbone

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
