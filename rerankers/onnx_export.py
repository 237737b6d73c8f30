"""Export a sentence-transformers cross-encoder to ONNX for :class:`OnnxCrossEncoderReranker`, or a
bi-encoder for the ``onnx`` dense encoder (:class:`~twostage_search.engine.dense.DenseEncoder`).

``twostage export-onnx MODEL OUT`` writes ``OUT/model.onnx`` (fp32, or INT8 by ONNX Runtime's dynamic
quantisation: weights stored as int8, activations quantised per batch at run time) and the model's
``tokenizer.json``; with ``--bi-encoder`` also ``dense.json`` (pooling and query prefix). The export is
checked against the torch model on a few pairs (texts) before it is kept. Needs the ``export`` extra (torch,
sentence-transformers, onnx, onnxruntime).
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
    st = _export_modules(precision)
    import torch

    ce = st.CrossEncoder(resolve_model(model), device="cpu")
    hf_model, tokenizer = ce.model.eval(), ce.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"{model!r} has no fast tokenizer: ONNX reranking needs its tokenizer.json")
    queries, passages = zip(*CHECK_PAIRS, strict=True)
    enc = tokenizer(list(queries), list(passages), padding=True, truncation=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    with torch.no_grad():
        expected = hf_model(**{n: enc[n] for n in names}).logits[:, 0].numpy()
    with atomic_directory(out, marker=MARKER) as tmp:
        diff = write_cross_encoder(hf_model, tokenizer, enc, names, tmp, expected, model, precision, opset, tolerance)
        info = {"model": model, "precision": precision, "opset": opset, "max_abs_logit_diff": round(diff, 6)}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    log.info("exported %s → %s (%s, max |Δlogit| %.4g)", model, out, precision, diff)
    return info


def write_cross_encoder(
    module: Any,
    tokenizer: Any,
    enc: Any,
    names: list[str],
    folder: Path,
    expected: Any,
    model: str,
    precision: Precision,
    opset: int,
    tolerance: float | None,
    *,
    per_channel: bool = False,
) -> float:
    """``folder/model.onnx`` (a classifier's ``logits``; INT8 weights one scale per tensor, or per output channel)
    and ``folder/tokenizer.json``, checked by :func:`check_logits`; returns the largest logit difference."""
    from onnxruntime.quantization import QuantType

    write_graph(
        module,
        enc,
        names,
        folder,
        output="logits",
        output_axes={0: "batch"},
        precision=precision,
        opset=opset,
        quantize={"weight_type": QuantType.QInt8, "per_channel": per_channel},
    )
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    return check_logits(folder / "model.onnx", enc, names, expected, model, precision, tolerance)


def check_logits(
    path: Path, enc: Any, names: list[str], expected: Any, model: str, precision: Precision, tolerance: float | None
) -> float:
    """The largest |torch − ONNX| logit of the graph at ``path`` over ``enc``'s pairs (``expected``: torch's),
    each pair run alone and unpadded as the rerankers score by default; raises :class:`TwoStageError` above
    ``tolerance`` (default 1e-3 for fp32, 1.0 for INT8)."""
    session = cpu_session(path, threads=None, extra="export")  # exact INT8 on every x86 CPU
    diff = 0.0
    for row, want in enumerate(expected):
        length = int(enc["attention_mask"][row].sum())
        got = session.run(None, {n: enc[n][row : row + 1, :length].numpy() for n in names})[0][0, 0]
        diff = max(diff, abs(float(got) - float(want)))
    bound = tolerance if tolerance is not None else (1e-3 if precision == "fp32" else 1.0)
    if diff > bound:
        raise TwoStageError(f"ONNX export of {model!r} differs from torch by {diff:.4f} logits (> {bound})")
    return diff


def _export_modules(precision: str) -> Any:
    """Check ``precision`` and the ``export`` extra's packages; ``sentence_transformers``."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be 'fp32' or 'int8', got {precision!r}")
    require("torch", "export")
    require("onnx", "export")
    require("onnxruntime", "export")
    return require("sentence_transformers", "export")


def write_graph(
    module: Any,
    enc: Any,
    names: list[str],
    folder: Path,
    *,
    output: str,
    output_axes: dict[int, str],
    precision: Precision,
    opset: int,
    quantize: dict[str, Any],
) -> Path:
    """``folder/model.onnx``: ``module`` traced on ``enc``'s ``names`` (batch and sequence axes dynamic), in fp32
    or dynamically quantised to INT8 with ``quantize`` (``quantize_dynamic``'s options)."""
    import torch
    from onnxruntime.quantization import quantize_dynamic

    fp32 = folder / ("model.onnx" if precision == "fp32" else "model-fp32.onnx")
    with torch.no_grad():
        torch.onnx.export(
            module,
            tuple(enc[n] for n in names),
            str(fp32),
            input_names=names,
            output_names=[output],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, output: output_axes},
            opset_version=opset,
            dynamo=False,
        )
    if precision == "int8":
        quantize_dynamic(str(fp32), str(folder / "model.onnx"), **quantize)
        fp32.unlink()
    return folder / "model.onnx"


# Texts a bi-encoder export is checked on (torch vs ONNX vectors, one text per run as queries are encoded).
CHECK_TEXTS = tuple(text for pair in CHECK_PAIRS for text in pair)


def export_bi_encoder(
    model: str, out: str | Path, *, precision: Precision = "fp32", opset: int = 17, tolerance: float | None = None
) -> dict[str, Any]:
    """Export ``model`` (a sentence-transformers bi-encoder with CLS or mean pooling, such as a student
    ``benchmarks.studies.student`` trained) to ``out`` atomically as the ``onnx`` dense encoder reads it:
    ``model.onnx`` (the transformer, output ``last_hidden_state``), ``tokenizer.json`` and ``dense.json``
    (its pooling, and its query prompt as the query prefix: empty without one); returns what was written
    (also saved as ``out/export.json``).

    ``tolerance`` bounds the largest ``1 − cos(torch vector, ONNX vector)`` on the check texts (default 1e-5
    for fp32, 0.05 for INT8, whose activations are quantised).

    The default is fp32: retrieval is more sensitive to quantisation than the check texts show. INT8 weights
    are quantised to 7 bits (``reduce_range``), as the bundled bge-small's are: on CPUs without VNNI the exact
    8-bit product sessions ask for (:mod:`~twostage_search.engine.onnx_session`) cost bge-small's 7-bit graph
    nothing measurable (docs/first-stage.md) and the full 8-bit cross-encoder 1.17× (docs/rerankers.md).
    A bge-small fine-tuned as a student lost 0.030 nDCG@10 on Home Depot's dev queries in 7-bit INT8 against
    its fp32 export (query vectors at cosine 0.988 to torch's on average), more than its training gained
    (docs/relevance-models.md): check an INT8 export on your dev queries before using it.
    """
    st = _export_modules(precision)
    import torch
    from onnxruntime.quantization import QuantType

    path = Path(resolve_model(model))
    modules = path / "modules.json"
    if path.is_dir() and not (
        modules.is_file() and any(str(m.get("type", "")).endswith("Pooling") for m in json.loads(modules.read_text()))
    ):
        raise InputError(f"{model!r} is not a sentence-transformers bi-encoder (no Pooling module in modules.json)")
    encoder = st.SentenceTransformer(str(path), device="cpu")
    transformer, pooling = encoder[0], _pooling(encoder, model)
    hf_model, tokenizer = transformer.auto_model.eval(), transformer.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"{model!r} has no fast tokenizer: the ONNX dense encoder needs its tokenizer.json")
    expected = encoder.encode(list(CHECK_TEXTS), normalize_embeddings=True, convert_to_numpy=True)
    enc = tokenizer(list(CHECK_TEXTS[:2]), padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    settings = {"pooling": pooling, "query_prefix": (getattr(encoder, "prompts", None) or {}).get("query", "")}
    with atomic_directory(out, marker=MARKER) as tmp:
        write_graph(
            _hidden_module(torch)(hf_model),
            enc,
            names,
            tmp,
            output="last_hidden_state",
            output_axes={0: "batch", 1: "sequence"},
            precision=precision,
            opset=opset,
            # INT8: 7-bit weights per output column, as the bundled bge-small's are (see above)
            quantize={"weight_type": QuantType.QInt8, "per_channel": True, "reduce_range": True},
        )
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "dense.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        from twostage_search.engine.dense import DenseEncoder

        got = DenseEncoder(str(tmp), max_length=encoder.max_seq_length or 512, query_prefix="").encode_queries(
            list(CHECK_TEXTS)
        )
        distance = float(max(1.0 - float(a @ b) for a, b in zip(expected, got, strict=True)))
        bound = tolerance if tolerance is not None else (1e-5 if precision == "fp32" else 0.05)
        if distance > bound:
            raise TwoStageError(f"ONNX export of {model!r} differs from torch: 1 − cos {distance:.2e} (> {bound})")
        info = {"model": model, "kind": "bi-encoder", "precision": precision, "opset": opset, **settings}
        info["max_cosine_distance"] = round(distance, 8)
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    log.info("exported %s → %s (%s, %s pooling, max 1 − cos %.2e)", model, out, precision, pooling, distance)
    return info


def _pooling(encoder: Any, model: str) -> str:
    """``cls`` or ``mean``: the sentence-transformers model's pooling, which the ONNX dense encoder repeats."""
    pools = [m for m in encoder if type(m).__name__ == "Pooling"]
    modes = [getattr(m, "pooling_mode", None) or m.get_pooling_mode_str() for m in pools]
    if len(modes) != 1 or modes[0] not in ("cls", "mean"):
        raise InputError(f"{model!r}: the ONNX dense encoder needs one CLS or mean pooling, found {modes}")
    return str(modes[0])


def _hidden_module(torch: Any) -> Any:
    class Hidden(torch.nn.Module):  # type: ignore[misc]  # the transformer's last hidden state alone, as the dense encoder reads it
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: Any) -> Any:
            return self.model(*inputs).last_hidden_state

    return Hidden
