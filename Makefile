# The README's two commands: `make demo` (main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

DATASET := benchmarks/data/scifact
INDEX   := var/scifact

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch from the local wheel first; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[splade,lucene,opensearch,rerank,train,llm,bench,service,test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

$(INDEX)/meta.json: $(STAMP) $(DATASET)/corpus.jsonl.gz
	$(BIN)/twostage index $(DATASET)/corpus.jsonl.gz --index $(INDEX)

demo: $(INDEX)/meta.json
	$(BIN)/twostage search --index $(INDEX) --k 5 "Vitamin D deficiency is associated with multiple sclerosis"
	$(BIN)/twostage search --index $(INDEX) --k 5 "Antibiotic resistance spreads between bacteria by horizontal gene transfer"
	$(BIN)/twostage search --index $(INDEX) --k 5 --reranker cross-encoder --rerank-depth 20 "Vitamin D deficiency is associated with multiple sclerosis"
	$(BIN)/python -m benchmarks.first_stage --dataset $(DATASET) --index $(INDEX) --out runs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) var runs
