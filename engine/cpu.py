"""What this machine's CPU is, as far as our numbers depend on it: its model name and the x86 features that
decide ONNX Runtime's 8-bit kernels (VNNI: exact and fast 8-bit products) and float kernels (AVX2 or AVX-512),
read from ``/proc/cpuinfo``. Benchmarks record it; :mod:`~twostage_search.engine.onnx_session` asks for exact
8-bit products only where the CPU's own are not exact."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# x86 features that change our numbers: INT8 products are several times faster with VNNI (a dense or
# cross-encoder pass, an index build), float kernels differ between AVX2 and AVX-512 in the last digits.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")


def cpu(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's model name and which of :data:`CPU_FEATURES` it has, from ``/proc/cpuinfo`` (or the text
    given); ``model`` is None and ``features`` empty where that is not available (not Linux, not x86)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "flags") and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name"), "features": [f for f in CPU_FEATURES if f in flags]}


def describe_cpu(info: Mapping[str, Any]) -> str:
    """One phrase for a report: ``"AMD EPYC, AVX-512 VNNI"``, ``"AVX2, no VNNI"``; "" where unknown."""
    features = set(info.get("features") or ())
    if "avx512_vnni" in features:
        kind = "AVX-512 VNNI"
    elif "avx_vnni" in features:
        kind = "AVX2 + AVX-VNNI"
    elif "avx512f" in features:
        kind = "AVX-512, no VNNI"
    elif "avx2" in features:
        kind = "AVX2, no VNNI"
    else:
        kind = ""
    return ", ".join(part for part in (info.get("model") or "", kind) if part)


# CPUs with any of these multiply unsigned by signed bytes into 32-bit sums (no saturation): exact.
EXACT_INT8 = ("avx512_vnni", "avx_vnni", "amx_int8")


def exact_int8_products(info: Mapping[str, Any] | None = None) -> bool:
    """Whether ONNX Runtime's default 8-bit product is exact on this CPU (``info``: a :func:`cpu` record)."""
    features = (cpu() if info is None else info).get("features") or ()
    return any(f in features for f in EXACT_INT8)
