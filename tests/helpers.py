"""Constants and helpers shared by the tests (imported as ``tests.helpers``, never from conftest)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from twostage_search.engine.costmodel import CostModel, LinearCost
from twostage_search.engine.types import Candidate, RankedList

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny"
NEEDS_NODE = "[needs the local OpenSearch node]"
"""Prefix of the skip reason of OpenSearch tests when the node did not start (test_opensearch_node.py fails)."""
MS_PER_DOC = CostModel({"rerank": LinearCost((0.0, 1.0, 0.0))})
"""A rerank cost model of 1 ms per reranked document and no per-call cost (the chunked-depth tests)."""


def need(module: str, extra: str) -> ModuleType:
    """Import ``module`` for a test module; skip without it, except in CI, where a skip is a failure.

    CI installs every extra, so a missing module there is a broken install, not an optional feature.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} missing: pip install -e '.[{extra}]' ({exc})"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)


def use_osmem() -> bool:
    """``TWOSTAGE_TEST_OPENSEARCH=osmem``: run the OpenSearch tests on the osmem-server emulator (a fast local
    loop; not proof of correctness) instead of a real local node. $OPENSEARCH_URL wins over both."""
    return os.environ.get("TWOSTAGE_TEST_OPENSEARCH") == "osmem" and not os.environ.get("OPENSEARCH_URL")


def plain_session(model_path: str | Path):
    """A plain ONNX Runtime CPU session on ``model_path``, set up as the engine's are for INT8 models: exact
    8-bit products (``session.x64quantprecision``), so its answers are the same on AVX2 and VNNI CPUs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def reference_run(model_path: str | Path, feed: dict) -> list:
    """The outputs of an ONNX model computed by ONNX's own reference evaluator (plain numpy, no CPU-specific
    kernels): an independent answer to hold ONNX Runtime's INT8 output against on any machine.

    The graph is converted to opset 21 first (the evaluator implements ``DequantizeLinear`` from opset 19).
    """
    import onnx
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(model_path))
    if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 21:
        model = version_converter.convert_version(model, 21)
    wanted = {i.name for i in model.graph.input}
    return ReferenceEvaluator(model).run(None, {k: v for k, v in feed.items() if k in wanted})


def numbered_candidates(n: int) -> list[Candidate]:
    """``d00`` … ``d{n-1}`` with falling first-stage scores n … 1 (no text)."""
    return [Candidate(f"d{i:02d}", float(n - i)) for i in range(n)]


class CorpusOrderRetriever:
    """A fake first stage: every given document, in the given order, with falling scores len(docs) … 1."""

    def __init__(self, docs):
        self.docs = docs

    def retrieve(self, query, k):
        cands = [Candidate(d.doc_id, float(len(self.docs) - i), d.text, d.title) for i, d in enumerate(self.docs)]
        return RankedList.from_candidates(query.query_id, cands, k=k)


def tiny_bert_classifier(*, vocab: int, hidden: int, layers: int, heads: int, intermediate: int, positions: int) -> Any:
    """A seeded BERT classifier (one logit, eager attention) of the given shape: a test fixture, not a model."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        type_vocab_size=2,
        num_labels=1,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config).eval()


def export_bare_encoder(bert: Any, path: Path, ids: Any) -> None:
    """Export a transformers ``BertModel`` bare to ONNX (inputs → last hidden state), traced on ``ids``."""
    import torch

    names = ["input_ids", "attention_mask", "token_type_ids"]

    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]

    with torch.no_grad():
        torch.onnx.export(
            Bare().eval(),  # eval: the exporter restores the wrapper's mode, and with it a shared fixture's
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
            opset_version=17,
            dynamo=False,
        )


# The query students' tests (test_bert_query.py, test_query_bert_layers.py): the teacher a student names, a few
# queries, and tiny seeded BERT encoders over the teacher's vocabulary (test fixtures, not models).
STUDENT_QUERIES = [
    "what causes ocean tides",
    "young kitten pet",
    "a much longer query about the moon and the sea and tides",
]


def student_teacher() -> dict[str, Any]:
    """The ``teacher`` document of a bge-small query student."""
    from twostage_search.engine.dense import BGE_QUERY_PREFIX, DEFAULT_DENSE

    return {"model": DEFAULT_DENSE, "pooling": "cls", "query_prefix": BGE_QUERY_PREFIX, "max_length": 256}


def tiny_teacher_vocab_bert(layers: int) -> Any:
    """A ``BertModel`` (hidden 16, 2 heads, eager attention, no pooler) over the teacher's 30,522-token
    vocabulary, built right after seeding torch with 0."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return BertModel(config, add_pooling_layer=False)


def teacher_token_ids(texts: list[str]) -> list[list[int]]:
    """``[CLS] text [SEP]`` ids of the teacher's tokenizer, read with ``tokenizers`` directly."""
    from tokenizers import Tokenizer

    from twostage_search.engine.dense import DEFAULT_DENSE, dense_model_files

    tokenizer = Tokenizer.from_file(str(dense_model_files(DEFAULT_DENSE)[1]))
    return [tokenizer.encode(t).ids for t in texts]
