"""One way to open an ONNX Runtime CPU session, shared by every ONNX model we run.

``InferenceSession.run`` may be called from many threads at once, so one session serves a whole process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twostage_search.engine.optional import require


def cpu_session(path: str | Path | bytes, *, threads: int | None, extra: str, spin: bool = True) -> Any:
    """A CPU session on ``path`` (or a serialised model) with all graph optimisations; ``threads`` caps the
    intra-op pool.

    ``extra`` names the twostage extra that installs onnxruntime, for the install hint. ``spin=False``
    stops the pool's threads from busy-waiting for the next run: slower back-to-back runs, but the cores
    stay free for what the caller does in between (a Lucene search).
    """
    ort = require("onnxruntime", extra)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
