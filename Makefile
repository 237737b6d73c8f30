# The README's two commands: `make demo` (set up and run the main job on the embedded default) and
# `make test` (set up everything and run the whole suite). `make check` is lint + types alone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# Extras the demo needs (SPLADE encoder, embedded Lucene index, dense encoder for the default BM25 + dense
# hybrid first stage, ONNX cross-encoder) and the full set.
DEMO_EXTRAS := splade,lucene,dense,rerank
ALL_EXTRAS  := splade,lucene,impact,opensearch,dense,rerank,export,train,graded,llm,bench,service,test
DEMO_STAMP  := $(VENV)/.demo-$(shell cksum pyproject.toml | cut -d' ' -f1)
ALL_STAMP   := $(VENV)/.all-$(shell cksum pyproject.toml | cut -d' ' -f1)
# strict editable install: a link tree of exactly what the wheel holds (twostage_search.*), which mypy reads.
# setuptools announces the link tree with an "information only" warning box on every install: not shown.
PIP_EDITABLE := --config-settings editable_mode=strict
PIP_QUIET    := PYTHONWARNINGS="ignore:Editable installation"
LINK_TREE = $(firstword $(wildcard build/__editable__.twostage_search-*))

# The link tree lists files, so a new module needs a re-install: the stamps depend on the sources too.
SOURCES := cli.py $(shell find engine indexes rerankers service benchmarks -name '*.py' 2>/dev/null)

DATASET := benchmarks/data/scifact
INDEX   := var/scifact

.PHONY: install install-demo demo test check lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would let a dependency pick another build.
	$(BIN)/pip install -q torch==2.13.0

$(DEMO_STAMP): pyproject.toml $(SOURCES) | $(VENV)/bin/python
	$(PIP_QUIET) $(BIN)/pip install -q $(PIP_EDITABLE) -e '.[$(DEMO_EXTRAS)]'
	touch $(DEMO_STAMP)

$(ALL_STAMP): pyproject.toml $(SOURCES) | $(VENV)/bin/python
	$(PIP_QUIET) $(BIN)/pip install -q $(PIP_EDITABLE) -e '.[$(ALL_EXTRAS)]'
	touch $(ALL_STAMP) $(DEMO_STAMP)

install-demo: $(DEMO_STAMP)
install: $(ALL_STAMP)

$(INDEX)/meta.json: $(DATASET)/corpus.jsonl.gz | $(DEMO_STAMP)
	$(BIN)/twostage index $(DATASET)/corpus.jsonl.gz --index $(INDEX)

demo: $(DEMO_STAMP) $(INDEX)/meta.json
	$(BIN)/twostage search --index $(INDEX) --k 5 "Vitamin D deficiency is associated with multiple sclerosis"
	$(BIN)/twostage search --index $(INDEX) --k 5 --reranker onnx-cross-encoder --rerank-depth 20 "Vitamin D deficiency is associated with multiple sclerosis"
	$(BIN)/twostage search --index $(INDEX) --k 5 --reranker onnx-cross-encoder --rerank-depth 20 "Antibiotic resistance spreads between bacteria by horizontal gene transfer"

check: $(ALL_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPYPATH=$(LINK_TREE) $(BIN)/mypy

lint: check

test: check
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) var runs build
