"""SPLADE on ONNX Runtime: the masked LM, max pooling over real tokens and ``log1p(relu(·))`` in one graph.

The graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model has them) and
returns the SPLADE weights, shape ``(batch, vocab)``: ``w_j = log1p(relu(max_i logit_ij))`` over the tokens
``i`` whose mask is 1 — the same formula as :class:`~engine.encoders.SpladeMLM` (max-pooling first is exact
because ``log1p(relu(·))`` is monotone).

The graph is exported from the torch model on first use and cached in
``$TWOSTAGE_CACHE_DIR/onnx/splade-<digest>/`` (default ``~/.cache/twostage``), where ``<digest>`` hashes the
model's files and the export recipe, so a changed checkpoint gets a new export. The export is written
atomically and checked against torch before it is kept; :func:`export_splade` is the explicit step (e.g. in
a Docker build). Once exported, encoding needs only ``onnxruntime`` and ``tokenizers`` (torch is imported
only to export). ``InferenceSession.run`` may be called from many threads at once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from twostage_search.engine.atomic import atomic_directory
from twostage_search.engine.errors import TwoStageError
from twostage_search.engine.models import resolve_model
from twostage_search.engine.onnx_session import cpu_session
from twostage_search.engine.optional import require
from twostage_search.engine.types import SparseVector

log = logging.getLogger(__name__)

RECIPE = "splade-maxpool-log1p-relu/v1"  # bump when the exported graph changes
MARKER = "export.json"
OPSET = 17
CHECK_TEXTS = (
    "what is the capital of france",
    "Insulin injections lower blood glucose in patients with type 1 diabetes mellitus.",
    "volcano",
)
_export_lock = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("TWOSTAGE_CACHE_DIR") or Path.home() / ".cache" / "twostage")


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
        raise TwoStageError(f"ONNX SPLADE needs a local model directory, got {model!r} ({path})")
    return cache_dir() / "onnx" / f"splade-{model_digest(path)[:16]}"


class _SpladeHead:  # built lazily so that torch is imported only when exporting
    @staticmethod
    def module(model: Any, torch: Any) -> Any:
        class Splade(torch.nn.Module):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.mlm = model

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
                kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kwargs["token_type_ids"] = token_type_ids
                logits = self.mlm(**kwargs).logits
                masked = logits.masked_fill((attention_mask == 0).unsqueeze(-1), float("-inf"))
                return torch.log1p(torch.relu(masked.amax(dim=1)))

        return Splade().eval()


def export_splade(model: str, out: str | Path | None = None, *, tolerance: float = 1e-4) -> Path:
    """Export ``model`` (``bundled:NAME`` or a local HF directory) to ONNX; return the export directory.

    The export is checked against torch (the plain formula, each text on its own) on a few texts:
    the largest weight difference must stay under ``tolerance``. Safe to call from several threads
    or processes (the directory appears atomically; a finished export is reused).
    """
    target = Path(out) if out is not None else export_dir(model)
    with _export_lock:
        if (target / MARKER).is_file():
            return target
        torch = require("torch", "splade")
        transformers = require("transformers", "splade")
        require("onnx", "splade")
        ort = require("onnxruntime", "splade")
        path = resolve_model(model)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        if not getattr(tokenizer, "is_fast", False):
            raise TwoStageError(f"{model!r} has no fast tokenizer: ONNX SPLADE needs its tokenizer.json")
        mlm = transformers.AutoModelForMaskedLM.from_pretrained(path).eval()
        wrapped = _SpladeHead.module(mlm, torch)
        enc = tokenizer(list(CHECK_TEXTS), padding=True, return_tensors="pt")
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
        with torch.no_grad():
            expected = [
                torch.log1p(torch.relu(mlm(**tokenizer(t, return_tensors="pt")).logits[0])).amax(dim=0).numpy()
                for t in CHECK_TEXTS
            ]
        with atomic_directory(target, marker=MARKER) as tmp:
            with torch.no_grad():
                torch.onnx.export(
                    wrapped,
                    tuple(enc[n] for n in names),
                    str(tmp / "model.onnx"),
                    input_names=names,
                    output_names=["weights"],
                    dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "weights": {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
            tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
            session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
            got = session.run(None, {n: enc[n].numpy() for n in names})[0]  # padded batch: masking must work
            diff = max(float(np.abs(got[i] - want).max()) for i, want in enumerate(expected))
            if diff > tolerance:
                raise TwoStageError(f"ONNX export of {model!r} differs from torch by {diff:.2e} (> {tolerance})")
            info = {
                "model": model,
                "recipe": RECIPE,
                "opset": OPSET,
                "inputs": names,
                "vocab_size": int(mlm.config.vocab_size),
                "max_abs_weight_diff": diff,
                "torch": torch.__version__,
            }
            (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    log.info("exported SPLADE %s → %s (max |Δw| %.2e)", model, target, diff)
    return target


Precision = Literal["fp32", "int8"]
PRECISIONS = ("fp32", "int8")


def int8_model(folder: Path) -> Path:
    """``folder/model-int8.onnx``: ONNX Runtime's dynamic INT8 quantisation of the fp32 export (weights int8
    per output channel, activations quantised per run). Faster (VNNI), not exact: see docs/first-stage.md."""
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


class OnnxSplade:
    """SPLADE side encoder on ONNX Runtime; same arguments and output as :class:`~engine.encoders.SpladeMLM`.

    Args:
        model: ``bundled:NAME`` or a local HF-format masked-LM directory (exported on first use).
        max_length: tokens per text; longer texts are truncated.
        batch_size: texts per run (texts are sorted by length, so a batch pads little).
        top_n: keep only the ``top_n`` heaviest terms per text (``None`` keeps all).
        threads: ONNX Runtime intra-op threads (``None``: one per physical core).
        precision: ``fp32`` (the exported graph, same weights as torch) or ``int8`` (dynamic quantisation:
            several times faster on CPUs with VNNI, weights differ by up to a few tenths).
    """

    def __init__(
        self,
        model: str,
        *,
        max_length: int = 256,
        batch_size: int = 8,
        top_n: int | None = None,
        threads: int | None = None,
        precision: Precision = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if max_length < 2:
            raise ValueError("max_length must be at least 2")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if top_n is not None and top_n < 1:
            raise ValueError("top_n must be positive or None")
        if threads is not None and threads < 1:
            raise ValueError("threads must be ≥ 1")
        require("onnxruntime", "splade")  # fail before any work when the extra is missing
        tokenizers = require("tokenizers", "splade")
        self.model_spec = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.top_n = top_n
        self.threads = threads
        self.precision = precision
        folder = export_splade(model)
        graph = folder / "model.onnx" if precision == "fp32" else int8_model(folder)
        info = json.loads((folder / MARKER).read_text())
        self._names: list[str] = list(info["inputs"])
        self._tokenizer_file = folder / "tokenizer.json"
        self._tokenizer = self._load_tokenizer(tokenizers)
        self._vocab = [self._tokenizer.id_to_token(i) or "" for i in range(int(info["vocab_size"]))]
        self._session: Any = cpu_session(graph, threads=threads, extra="splade")

    def _load_tokenizer(self, tokenizers: Any) -> Any:
        # Configured once, here, and never mutated afterwards: encoding is then thread-safe.
        tokenizer = tokenizers.Tokenizer.from_file(str(self._tokenizer_file))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)
        return tokenizer

    def with_limits(self, *, max_length: int, top_n: int | None) -> OnnxSplade:
        """The same ONNX session with other length/pruning limits (e.g. for the query side)."""
        other = copy.copy(self)
        other.max_length, other.top_n = max_length, top_n
        other._tokenizer = other._load_tokenizer(require("tokenizers", "splade"))
        return other

    def config(self) -> dict[str, Any]:
        return {
            "kind": "splade-mlm",
            "backend": "onnx",
            "precision": self.precision,
            "model": self.model_spec,
            "max_length": self.max_length,
            "top_n": self.top_n,
        }

    def weights(self, texts: Sequence[str]) -> np.ndarray:
        """Dense SPLADE weights, shape ``(len(texts), vocab)``, in input order."""
        batch = self._tokenizer.encode_batch(list(texts)) if len(texts) > 1 else [self._tokenizer.encode(texts[0])]
        encoded = [(e.ids, e.type_ids) for e in batch]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i][0]))
        out = np.zeros((len(texts), len(self._vocab)), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encoded[i][0]) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for row, i in enumerate(idx):
                n = len(encoded[i][0])
                ids[row, :n], types[row, :n] = encoded[i]
                mask[row, :n] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out[idx] = self._session.run(None, {n: feed[n] for n in self._names})[0]
        return out

    def encode(self, texts: Sequence[str]) -> list[SparseVector]:
        if not texts:
            return []
        return [sparse_from_dense(row, self._vocab, self.top_n) for row in self.weights(texts)]


def sparse_from_dense(row: np.ndarray, vocab: Sequence[str], top_n: int | None = None) -> SparseVector:
    """The non-zero entries of one dense weight row as a :class:`SparseVector` (the ``top_n`` heaviest)."""
    nz = np.flatnonzero(row > 0)
    if top_n is not None and len(nz) > top_n:
        nz = nz[np.argpartition(-row[nz], top_n - 1)[:top_n]]
    return SparseVector.from_dict({vocab[int(t)]: float(row[t]) for t in nz})
