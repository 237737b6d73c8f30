"""Export a sentence-transformers cross-encoder to ONNX for :class:`OnnxCrossEncoderReranker`.

``twostage export-onnx MODEL OUT`` writes ``OUT/model.onnx`` (fp32, or INT8 by ONNX Runtime's dynamic
quantisation: weights stored as int8, activations quantised per batch at run time) and the model's
``tokenizer.json``. The export is checked against the torch model on a few pairs before it is kept.
Needs the ``export`` extra (torch, sentence-transformers, onnx, onnxruntime).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from twostage_search.engine.atomic import atomic_directory
from twostage_search.engine.errors import InputError, TwoStageError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.onnx_session import cpu_session
from twostage_search.engine.optional import require

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]
MARKER = "export.json"
# Pairs the export is checked on (torch vs ONNX logits).
CHECK_PAIRS = (
    ("what causes ocean tides", "The Moon's gravity causes the ocean tides on Earth."),
    ("capital of france", "Paris is the capital and most populous city of France."),
    ("insulin", "Coffee is a brewed drink prepared from roasted coffee beans."),
)


def export_cross_encoder(
    model: str, out: str | Path, *, precision: Precision = "int8", opset: int = 17, tolerance: float | None = None
) -> dict[str, Any]:
    """Export ``model`` (a sentence-transformers CrossEncoder: ``bundled:NAME``, a directory or a hub name)
    to ``out`` atomically; returns what was written (also saved as ``out/export.json``).

    ``tolerance`` bounds the largest |torch − ONNX| logit on the check pairs (default 1e-3 for fp32,
    1.0 for INT8, whose activations are quantised; the logits span about ±10).
    """
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    torch = require("torch", "export")
    st = require("sentence_transformers", "export")
    require("onnx", "export")
    require("onnxruntime", "export")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ce = st.CrossEncoder(resolve_model(model), device="cpu")
    hf_model, tokenizer = ce.model.eval(), ce.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"{model!r} has no fast tokenizer: ONNX reranking needs its tokenizer.json")
    queries, passages = zip(*CHECK_PAIRS, strict=True)
    enc = tokenizer(list(queries), list(passages), padding=True, truncation=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    with torch.no_grad():
        expected = hf_model(**{n: enc[n] for n in names}).logits[:, 0].numpy()
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    with atomic_directory(out, marker=MARKER) as tmp:
        fp32 = tmp / ("model.onnx" if precision == "fp32" else "model-fp32.onnx")
        with torch.no_grad():
            torch.onnx.export(
                hf_model,
                tuple(enc[n] for n in names),
                str(fp32),
                input_names=names,
                output_names=["logits"],
                dynamic_axes={**dynamic, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        if precision == "int8":
            quantize_dynamic(str(fp32), str(tmp / "model.onnx"), weight_type=QuantType.QInt8)
            fp32.unlink()
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        session = cpu_session(tmp / "model.onnx", threads=None, extra="export")  # exact INT8 on every x86 CPU
        diff = 0.0
        for row, want in enumerate(expected):  # one pair per run, unpadded, as the reranker scores by default
            length = int(enc["attention_mask"][row].sum())
            got = session.run(None, {n: enc[n][row : row + 1, :length].numpy() for n in names})[0][0, 0]
            diff = max(diff, abs(float(got) - float(want)))
        bound = tolerance if tolerance is not None else (1e-3 if precision == "fp32" else 1.0)
        if diff > bound:
            raise TwoStageError(f"ONNX export of {model!r} differs from torch by {diff:.4f} logits (> {bound})")
        info = {"model": model, "precision": precision, "opset": opset, "max_abs_logit_diff": round(diff, 6)}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    log.info("exported %s → %s (%s, max |Δlogit| %.4g)", model, out, precision, diff)
    return info
