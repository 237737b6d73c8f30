"""One way to open an ONNX Runtime CPU session, shared by every ONNX model we run.

``InferenceSession.run`` may be called from many threads at once, so one session serves a whole process.

INT8 matrix products are exact on every x86-64 CPU: ONNX Runtime's default 8-bit matrix product on CPUs
without VNNI (AVX2, AVX-512 without VNNI) multiplies unsigned by signed bytes with 16-bit intermediate sums
that can saturate, so an INT8 model's output there differs from a VNNI CPU's by far more than rounding (a
SPLADE query weight by 1.05 where a VNNI CPU is within 0.75). Sessions on those CPUs therefore set
``session.x64quantprecision``, which makes them use the exact unsigned × unsigned product. On CPUs with VNNI
(:func:`~twostage_search.engine.cpu.exact_int8_products`) the default product is exact already and the
setting is left off: there it gave the same outputs bit for bit but, for weights that use all 8 bits (the
bundled MS MARCO cross-encoder's), took 1.3–1.7× the time (docs/rerankers.md). The float kernels between
them (layer norm, GELU, softmax) still round differently on AVX2 and AVX-512, and each dynamically quantised
layer re-quantises its input, so outputs differ between CPU kinds in the last digits and an index built on one
kind ranks a few ties and near-ties differently from one built on the other (docs/first-stage.md, "CPU
kinds").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from twostage_search.engine.cpu import exact_int8_products
from twostage_search.engine.optional import require


def cpu_session(
    path: str | Path | bytes,
    *,
    threads: int | None,
    extra: str,
    spin: bool = True,
    exact_int8: bool | Literal["always"] = True,
) -> Any:
    """A CPU session on ``path`` (or a serialised model) with all graph optimisations; ``threads`` caps the
    intra-op pool.

    ``extra`` names the twostage extra that installs onnxruntime, for the install hint. ``spin=False``
    stops the pool's threads from busy-waiting for the next run: slower back-to-back runs, but the cores
    stay free for what the caller does in between (a Lucene search). ``exact_int8=False`` restores ONNX
    Runtime's default 8-bit product (saturating on CPUs without VNNI): for measuring what exactness costs.
    On CPUs whose default product is exact (VNNI) the two are the same session; ``"always"`` sets
    ``session.x64quantprecision`` there too (for measuring what the setting would cost).
    """
    ort = require("onnxruntime", extra)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if exact_int8 == "always" or (exact_int8 and not exact_int8_products()):
        options.add_session_config_entry("session.x64quantprecision", "1")  # exact INT8 products (see above)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
