"""One way to open an ONNX Runtime CPU session, shared by every ONNX model we run.

``InferenceSession.run`` may be called from many threads at once, so one session serves a whole process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twostage_search.engine.optional import require


def cpu_session(path: str | Path, *, threads: int | None, extra: str) -> Any:
    """A CPU session on ``path`` with all graph optimisations; ``threads`` caps the intra-op pool.

    ``extra`` names the twostage extra that installs onnxruntime, for the install hint.
    """
    ort = require("onnxruntime", extra)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
