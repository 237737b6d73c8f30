"""Export a SPLADE masked LM to ONNX for :class:`~engine.onnx_splade.OnnxSplade`.

An export directory holds:

- ``trunk.onnx``: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model has them) to the
  hidden states that enter the vocabulary projection, shape ``(batch, tokens, hidden)``;
- ``head.npz``: that projection, ``weight`` ``(hidden, vocab)`` and ``bias`` ``(vocab,)``, applied to each
  text's real tokens only, by a graph built from these arrays (see :class:`~engine.onnx_splade.OnnxSplade`);
- ``model.onnx``: the whole model in one graph, returning the SPLADE weights ``(batch, vocab)``:
  ``w_j = log1p(relu(max_i logit_ij))`` over the tokens ``i`` whose mask is 1. It is what INT8
  quantisation starts from, and what runs when a model's projection cannot be split off;
- ``tokenizer.json`` and ``export.json`` (what was exported, and how close it came to torch).

The export runs once per model and is cached in ``$TWOSTAGE_CACHE_DIR/onnx/splade-<digest>/`` (default: the
user cache directory, ``$XDG_CACHE_HOME/twostage`` or ``~/.cache/twostage``), where ``<digest>`` hashes the
model's files and the export recipe, so a changed checkpoint gets a new export. It is written atomically and
checked against torch before it is kept; :func:`export_splade` is the explicit step (e.g. in a Docker build).
Only this module imports torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from twostage_search.engine.atomic import atomic_directory
from twostage_search.engine.errors import InputError, TwoStageError
from twostage_search.engine.models import cache_dir, resolve_model
from twostage_search.engine.onnx_session import cpu_session
from twostage_search.engine.optional import require

log = logging.getLogger(__name__)

RECIPE = "splade-maxpool-log1p-relu/v2+trunk-head"  # bump when the exported files change
MARKER = "export.json"
OPSET = 17
CHECK_TEXTS = (
    "what is the capital of france",
    "Insulin injections lower blood glucose in patients with type 1 diabetes mellitus.",
    "volcano",
)
_export_lock = threading.Lock()


def model_digest(model_path: Path) -> str:
    """SHA-256 over the model directory's files (names and bytes) and the export recipe."""
    h = hashlib.sha256(RECIPE.encode())
    for f in sorted(p for p in model_path.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def export_dir(model: str) -> Path:
    """Where the ONNX export of ``model`` lives (it may not exist yet)."""
    path = Path(resolve_model(model))
    if not path.is_dir():
        raise InputError(f"ONNX SPLADE needs a local model directory, got {model!r} ({path})")
    return cache_dir() / "onnx" / f"splade-{model_digest(path)[:16]}"


def _modules(model: Any, torch: Any) -> tuple[Any, Any]:
    """The whole SPLADE graph, and the trunk: the model with its vocabulary projection replaced by identity."""

    class Splade(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, mlm: Any) -> None:
            super().__init__()
            self.mlm = mlm

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.mlm(**kwargs).logits

    class Pooled(Splade):
        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            logits = super().forward(input_ids, attention_mask, token_type_ids)
            masked = logits.masked_fill((attention_mask == 0).unsqueeze(-1), float("-inf"))
            return torch.log1p(torch.relu(masked.amax(dim=1)))

    trunk = copy.deepcopy(model)
    projection = trunk.get_output_embeddings()
    for _, module in trunk.named_modules():
        for child_name, child in module.named_children():
            if child is projection:
                setattr(module, child_name, torch.nn.Identity())
                break
    return Pooled(model).eval(), Splade(trunk).eval()


def _export(module: Any, torch: Any, args: tuple[Any, ...], path: Path, names: list[str], output: str) -> None:
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if output == "weights" else {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(path), input_names=names, output_names=[output],
            dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )  # fmt: skip


def pooled_head(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """SPLADE weights of one text from its real tokens' ``hidden`` states: ``log1p(relu(max(hW) + b))``.

    Adding the bias after the max over tokens is exact (it is the same for every token).
    """
    row: np.ndarray = (hidden @ weight).max(axis=0)
    row += bias
    np.maximum(row, 0.0, out=row)
    np.log1p(row, out=row)
    return row


def export_splade(model: str, out: str | Path | None = None, *, tolerance: float = 1e-4) -> Path:
    """Export ``model`` (``bundled:NAME`` or a local HF directory) to ONNX; return the export directory.

    Both the one-graph export and trunk + numpy head are checked against torch (the plain formula, each
    text on its own) on a few texts: the whole graph must stay within ``tolerance``; the split is kept
    (``"head": true`` in ``export.json``) only when it does too. Safe to call from several threads or
    processes (the directory appears atomically; a finished export is reused).
    """
    target = Path(out) if out is not None else export_dir(model)
    with _export_lock:
        if (target / MARKER).is_file():
            return target
        torch = require("torch", "splade")
        transformers = require("transformers", "splade")
        require("onnx", "splade")
        require("onnxruntime", "splade")
        path = resolve_model(model)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        if not getattr(tokenizer, "is_fast", False):
            raise InputError(f"{model!r} has no fast tokenizer: ONNX SPLADE needs its tokenizer.json")
        mlm = transformers.AutoModelForMaskedLM.from_pretrained(path).eval()
        whole, trunk = _modules(mlm, torch)
        enc = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
        with torch.no_grad():
            expected = [
                torch.log1p(torch.relu(mlm(**tokenizer(t, return_tensors="pt")).logits[0])).amax(dim=0).numpy()
                for t in CHECK_TEXTS
            ]
        projection = mlm.get_output_embeddings()
        weight = np.ascontiguousarray(projection.weight.detach().numpy().T, dtype=np.float32)
        has_bias = getattr(projection, "bias", None) is not None
        bias = np.zeros(weight.shape[1], np.float32)
        if has_bias:
            bias = projection.bias.detach().numpy().astype(np.float32)
        feed = {n: enc[n].numpy() for n in names}
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        with atomic_directory(target, marker=MARKER) as tmp:
            args = tuple(enc[n] for n in names)
            _export(whole, torch, args, tmp / "model.onnx", names, "weights")
            _export(trunk, torch, args, tmp / "trunk.onnx", names, "hidden")
            np.savez(tmp / "head.npz", weight=weight, bias=bias)
            tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))

            def session(name: str) -> Any:
                return cpu_session(tmp / name, threads=None, extra="splade")

            got = session("model.onnx").run(None, feed)[0]  # padded batch: masking must work
            diff = max(float(np.abs(got[i] - want).max()) for i, want in enumerate(expected))
            if diff > tolerance:
                raise TwoStageError(f"ONNX export of {model!r} differs from torch by {diff:.2e} (> {tolerance})")
            hidden = session("trunk.onnx").run(None, feed)[0]
            split = [pooled_head(hidden[i, : lengths[i]], weight, bias) for i in range(len(expected))]
            head_diff = max(float(np.abs(s - want).max()) for s, want in zip(split, expected, strict=True))
            info = {
                "model": model,
                "recipe": RECIPE,
                "opset": OPSET,
                "inputs": names,
                "vocab_size": int(mlm.config.vocab_size),
                "max_abs_weight_diff": diff,
                "head": head_diff <= tolerance,
                "head_max_abs_weight_diff": head_diff,
                "torch": torch.__version__,
            }
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    if not info["head"]:
        log.warning("%s: the vocabulary projection does not split off (|Δw| %.2e): one graph", model, head_diff)
    log.info("exported SPLADE %s → %s (max |Δw| %.2e, split %.2e)", model, target, diff, head_diff)
    return target


def int8_model(folder: Path) -> Path:
    """``folder/model-int8.onnx``: ONNX Runtime's dynamic INT8 quantisation of the one-graph export (weights
    int8 per output channel, activations quantised per run). Faster (VNNI), not exact: see docs/first-stage.md."""
    target = folder / "model-int8.onnx"
    with _export_lock:
        if target.is_file():
            return target
        require("onnxruntime", "splade")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = folder / f".model-int8.{os.getpid()}.{threading.get_ident()}.onnx"
        try:
            quantize_dynamic(str(folder / "model.onnx"), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
            os.replace(tmp, target)  # atomic: readers see the whole file or none
        finally:
            tmp.unlink(missing_ok=True)
    return target
