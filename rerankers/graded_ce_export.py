"""``twostage export-onnx MODEL OUT --graded-ce``: a ``graded-ce`` model as one ONNX graph, INT8 by default.

The fine-tuned model (the base with its delta) is traced to ONNX and, for INT8, quantised by ONNX Runtime's
dynamic quantisation with one weight scale per output channel (on the CrowdFlower dev queries the per-channel
graph's logits were the closest to fp32 of the INT8 variants tried and the fastest; see
docs/relevance-models.md). ``OUT`` holds ``model.onnx``, ``tokenizer.json`` and the model's ``model.json``:
the same ordinal model (its grade thresholds were chosen on the fp32 logits), whose ``meta.onnx`` records the
export. The ``graded-ce`` reranker runs such a folder on ONNX Runtime, one pair per run (a dynamically
quantised graph's score would otherwise depend on its batch-mates), without torch. The export is checked
against the torch model on a few pairs before it is kept, and written atomically.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from twostage_search.engine.atomic import atomic_directory
from twostage_search.engine.errors import InputError
from twostage_search.engine.models import DEFAULT_ONNX_CROSS_ENCODER
from twostage_search.engine.optional import require
from twostage_search.rerankers.graded import MODEL_FILE
from twostage_search.rerankers.graded_ce import EXTRA, ONNX_FILE, load_finetuned, load_graded_ce_model
from twostage_search.rerankers.onnx_export import CHECK_PAIRS, MARKER, Precision, write_cross_encoder

log = logging.getLogger(__name__)


def export_graded_ce(
    model: str, out: str | Path, *, precision: Precision = "int8", opset: int = 17, tolerance: float | None = None
) -> dict[str, Any]:
    """Export the ``graded-ce`` model ``model`` (``bundled:NAME`` or a folder with a delta) to the folder
    ``out``; returns what was written (also ``out/export.json``).

    ``tolerance`` bounds the largest |torch − ONNX| logit on the check pairs (default 1e-3 for fp32, 1.0 for
    INT8). A model that is already an ONNX graph is refused.
    """
    if precision not in ("fp32", "int8"):
        raise InputError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    for module in ("torch", "onnx", "onnxruntime", "safetensors"):
        require(module, EXTRA)
    import torch

    ordinal, weights = load_graded_ce_model(model)
    if weights.name == ONNX_FILE:
        raise InputError(f"{model}: already an ONNX graded-ce model")
    meta = dict(ordinal.meta or {})
    net, tokenizer = load_finetuned(str(meta.get("base", DEFAULT_ONNX_CROSS_ENCODER)), weights)
    queries, passages = zip(*CHECK_PAIRS, strict=True)
    max_length = int(meta.get("max_length", 64))
    enc = tokenizer(
        list(queries),
        list(passages),
        truncation="longest_first",
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    with torch.inference_mode():
        expected = net(**{n: enc[n] for n in names}).logits[:, 0].float().numpy()
    with atomic_directory(out, marker=MARKER) as tmp:
        diff = write_cross_encoder(
            net, tokenizer, enc, names, tmp, expected, model, precision, opset, tolerance, per_channel=True
        )
        info = {"model": model, "precision": precision, "opset": opset, "max_abs_logit_diff": round(diff, 6)}
        meta.pop("delta_model", None)
        meta.pop("delta", None)
        replace(ordinal, meta=meta | {"onnx": info}).save(tmp / MODEL_FILE)
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    log.info("exported graded-ce %s → %s (%s, max |Δlogit| %.4g)", model, out, precision, diff)
    return info
