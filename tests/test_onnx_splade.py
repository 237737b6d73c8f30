"""SPLADE on ONNX Runtime (the default backend) against the plain formula and the torch path, on the real
bundled model; the export cache; and indexes written before the ``backend`` parameter existed."""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import need, reference_run
from twostage_search.engine.encoders import SpladeMLM, create_encoder, encoder_from_meta
from twostage_search.engine.models import DEFAULT_SPLADE, resolve_model

TEXTS = [
    "what is the capital of france",
    "0-dimensional biomaterials show inductive properties.",
    "Insulin injections lower blood glucose; volcanoes erupt lava and ash over the island.",
]


@pytest.fixture(scope="module")
def torch_side():
    return SpladeMLM(DEFAULT_SPLADE, max_length=256)


@pytest.fixture(scope="module")
def onnx_side(encoder):
    need("onnxruntime", "splade")
    assert encoder.config()["doc"]["backend"] == "onnx"  # the default
    return encoder.doc


def _plain_formula(texts, max_length=256):
    """Max over each text's real tokens of log1p(relu(MLM logits)), each text on its own (no batching)."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = resolve_model(DEFAULT_SPLADE)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path).eval()
    out = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            weights = torch.log1p(torch.relu(model(**enc).logits[0])).amax(dim=0)
        out.append({tokenizer.convert_ids_to_tokens(int(i)): float(weights[i]) for i in weights.nonzero()[:, 0]})
    return out


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_both_backends_match_the_plain_formula(backend, onnx_side, torch_side, tiny_docs):
    texts = [*TEXTS, *(d.full_text for d in tiny_docs[:3])]
    expected = _plain_formula(texts)
    got = (onnx_side if backend == "onnx" else torch_side).encode(texts)  # one padded, length-sorted batch
    for vector, want in zip(got, expected, strict=True):
        have = vector.as_dict()
        assert have.keys() == want.keys()
        assert max(abs(have[t] - want[t]) for t in want) < 1e-4


def test_onnx_and_torch_give_the_same_impacts(onnx_side, torch_side, tiny_docs):
    """Quantised impacts agree except where a weight × scale lies within float error of a rounding edge."""
    texts = [*TEXTS, *(d.full_text for d in tiny_docs)]
    for a, b in zip(onnx_side.encode(texts), torch_side.encode(texts), strict=True):
        qa, qb = a.quantize(100), b.quantize(100)
        differ = {t for t in qa.keys() | qb.keys() if qa.get(t) != qb.get(t)}
        wa = a.as_dict()
        for t in differ:
            assert abs(math.modf(wa.get(t, 0.0) * 100)[0] - 0.5) < 1e-3, (t, qa.get(t), qb.get(t))
        assert len(differ) <= 1


def test_truncation_matches_the_hf_tokenizer(onnx_side, torch_side):
    long_text = " ".join(["insulin glucose pancreas"] * 200)
    short = onnx_side.with_limits(max_length=16, top_n=None)
    (a,) = short.encode([long_text])
    (b,) = torch_side.with_limits(max_length=16, top_n=None).encode([long_text])
    assert a.terms[:5] == b.terms[:5]
    assert max(abs(a.as_dict()[t] - w) for t, w in b.as_dict().items()) < 1e-4
    assert short.max_length == 16 and onnx_side.max_length == 256  # with_limits leaves the original alone


def test_top_n_keeps_the_heaviest_terms(onnx_side):
    (full,) = onnx_side.encode([TEXTS[2]])
    (top,) = onnx_side.with_limits(max_length=256, top_n=5).encode([TEXTS[2]])
    assert top.terms == full.terms[:5]


def test_export_is_cached_and_described(onnx_side):
    from twostage_search.engine.splade_export import MARKER, export_dir, export_splade, model_digest

    folder = export_dir(DEFAULT_SPLADE)
    info = json.loads((folder / MARKER).read_text())
    assert info["model"] == DEFAULT_SPLADE and info["max_abs_weight_diff"] < 1e-4
    assert folder.name == f"splade-{model_digest(Path(resolve_model(DEFAULT_SPLADE)))[:16]}"
    before = (folder / "model.onnx").stat().st_mtime_ns
    assert export_splade(DEFAULT_SPLADE) == folder  # reused, not rewritten
    assert (folder / "model.onnx").stat().st_mtime_ns == before


def test_old_meta_without_backend_reopens_with_torch():
    old = {"name": "splade", "params": {"model": DEFAULT_SPLADE, "max_length": 256, "batch_size": 32}}
    enc = encoder_from_meta(old)
    assert enc.config()["doc"]["backend"] == "torch" and enc.config()["query"]["backend"] == "torch"
    new = encoder_from_meta({"name": "splade", "params": {"backend": "onnx"}})
    assert new.config()["query"]["backend"] == "onnx"


def test_bad_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend"):
        create_encoder("splade", backend="tensorflow")
    with pytest.raises(ValueError, match="CPU"):
        create_encoder("splade", backend="onnx", device="cuda")


INT8_TOLERANCE = 0.05
"""ONNX Runtime's INT8 weights against the reference evaluator's: one rounding edge, not saturation (see below)."""


def _int8_reference(texts):
    """The INT8 graph's weights for each text (one text per run), computed by ONNX's reference evaluator."""
    from tokenizers import Tokenizer

    from twostage_search.engine.splade_export import export_dir, int8_model

    folder = export_dir(DEFAULT_SPLADE)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    out = []
    for text in texts:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        (weights,) = reference_run(int8_model(folder), feed)
        out.append({tokenizer.id_to_token(int(i)): float(weights[0, i]) for i in np.flatnonzero(weights[0] > 0)})
    return out


def test_int8_sides_compute_the_quantised_graph_exactly(encoder):
    """INT8 on ONNX Runtime equals ONNX's plain-numpy reference run of the same quantised graph, on any x86 CPU.

    Without exact 8-bit products, CPUs without VNNI saturate intermediate sums and differ from this reference
    by tenths of a weight up to a whole unit (0.48 and 1.02 on an AVX2 CPU). With them only float32 rounding
    differs, and a rounding difference can at most move one activation across a rounding edge of its
    quantisation, which moves the weights after it by hundredths. The bound (0.05) allows that, not saturation.
    """
    enc8 = create_encoder("splade", query_precision="int8")
    assert enc8.config()["query"]["precision"] == "int8" and enc8.config()["doc"]["precision"] == "fp32"
    expected = _int8_reference(TEXTS)
    for text, want in zip(TEXTS, expected, strict=True):
        (got,) = enc8.encode_queries([text])
        have = got.as_dict()  # the query side keeps its heaviest terms (query_top_n)
        assert max(abs(want.get(t, 0.0) - w) for t, w in have.items()) < INT8_TOLERANCE, text
        left_out = [w for t, w in want.items() if t not in have]
        assert len(have) == min(len(want), enc8.config()["query"]["top_n"]), text
        assert max(left_out, default=0.0) <= min(have.values()) + INT8_TOLERANCE, text
        (exact,) = encoder.encode_queries([text])
        assert set(exact.terms[:3]) <= set(got.terms[:6]), (exact.terms[:6], got.terms[:6])  # same leading terms
    docs8 = create_encoder("splade", precision="int8")  # INT8 documents, exact (fp32) queries
    assert docs8.config()["doc"]["precision"] == "int8" and docs8.config()["query"]["precision"] == "fp32"
    assert docs8.encode_queries(TEXTS) == encoder.encode_queries(TEXTS)
    for got, want in zip(docs8.encode_docs(TEXTS[:1]), expected[:1], strict=True):  # one text: same quantisation
        assert max(abs(got.as_dict().get(t, 0.0) - w) for t, w in want.items()) < INT8_TOLERANCE
    with pytest.raises(ValueError, match="onnx"):
        create_encoder("splade", backend="torch", query_precision="int8")


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_restricted_output_is_the_full_output_limited_to_the_terms(backend, onnx_side, torch_side):
    side = (onnx_side if backend == "onnx" else torch_side).with_limits(max_length=256, top_n=None)
    full = side.encode(TEXTS)
    terms = {t for v in full for t in v.terms[::2]} | {"not-a-vocabulary-term"}
    limited = side.restricted(terms)
    for want, got in zip(full, limited.encode(TEXTS), strict=True):
        kept = {t: w for t, w in want.as_dict().items() if t in terms}
        assert got.as_dict().keys() == kept.keys()
        assert max(abs(got.as_dict()[t] - w) for t, w in kept.items()) < 1e-5
    top3 = side.with_limits(max_length=256, top_n=3).restricted(terms).encode(TEXTS)
    for want, got in zip(full, top3, strict=True):
        assert got.terms == tuple(t for t in want.terms if t in terms)[:3]
    twice = limited.restricted({full[0].terms[0], full[0].terms[2], full[0].terms[1]})
    assert set(twice.encode(TEXTS[:1])[0].terms) == {full[0].terms[0], full[0].terms[2]}  # [1] was dropped


def test_onnx_head_and_one_graph_agree(onnx_side):
    """The split export (trunk + numpy projection, the default) against the one-graph export."""
    from twostage_search.engine.onnx_session import cpu_session
    from twostage_search.engine.splade_export import export_dir

    folder = export_dir(DEFAULT_SPLADE)
    assert json.loads((folder / "export.json").read_text())["head"] is True
    assert onnx_side._graph.name == "trunk.onnx"
    whole = copy.copy(onnx_side)
    whole._head, whole._session = None, cpu_session(folder / "model.onnx", threads=1, extra="splade")
    texts = [*TEXTS, " ".join(["insulin glucose pancreas"] * 100)]
    assert np.abs(onnx_side.weights(texts) - whole.weights(texts)).max() < 1e-4
