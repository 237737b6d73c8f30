"""The SPLADE encoder with the real default weights (bundled:splade-tiny, loaded offline)."""

import pytest

from twostage_search.engine.encoders import SpladeMLM, TokenWeightLookup, create_encoder
from twostage_search.engine.errors import UnknownBackendError
from twostage_search.engine.models import DEFAULT_SPLADE, resolve_model
from twostage_search.engine.protocols import Encoder


def test_default_model_is_bundled_and_real():
    path = resolve_model(DEFAULT_SPLADE)
    assert path.endswith("cognition/model")


def test_encoder_satisfies_protocol(encoder):
    assert isinstance(encoder, Encoder)
    assert encoder.config()["name"] == "splade"


def test_weights_are_non_negative_and_sparse(encoder, tiny_docs):
    vecs = encoder.encode_docs([d.full_text for d in tiny_docs])
    assert len(vecs) == len(tiny_docs)
    for v in vecs:
        assert 0 < len(v) < 1000  # sparse over a 30,522-term vocabulary
        assert all(w > 0 for w in v.weights)
        assert list(v.weights) == sorted(v.weights, reverse=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("what is the capital of france", {"capital", "france"}),
        ("insulin injections for diabetes", {"insulin", "diabetes"}),
        ("volcano lava", {"volcano", "lava"}),
    ],
)
def test_query_terms_rank_top(encoder, text, expected):
    (v,) = encoder.encode_queries([text])
    assert expected <= set(v.terms[:4]), v.terms[:8]


def test_expansion_adds_related_terms(encoder):
    (v,) = encoder.encode_queries(["what is the capital of france"])
    assert "paris" in v.terms or "french" in v.terms  # learned expansion beyond the input tokens


def test_batching_gives_the_same_vectors_as_one_by_one(tiny_docs):
    texts = [d.full_text for d in tiny_docs]
    batched = SpladeMLM(batch_size=5).encode(texts)
    single = SpladeMLM(batch_size=1).encode(texts)
    for a, b in zip(batched, single, strict=True):
        assert set(a.terms) == set(b.terms)
        da, db = a.as_dict(), b.as_dict()
        assert max(abs(da[t] - db[t]) for t in da) < 1e-4


def test_deterministic(encoder):
    a = encoder.encode_docs(["the moon causes tides", "coffee contains caffeine"])
    b = encoder.encode_docs(["the moon causes tides", "coffee contains caffeine"])
    assert a == b


def test_top_n_pruning_and_max_length(tiny_docs):
    full = SpladeMLM().encode([tiny_docs[2].full_text])[0]
    pruned = SpladeMLM(top_n=5).encode([tiny_docs[2].full_text])[0]
    assert len(pruned) == 5
    assert pruned.terms == full.terms[:5]
    short = SpladeMLM(max_length=4).encode([tiny_docs[2].full_text])[0]  # [CLS] + 2 tokens + [SEP]
    assert 0 < len(short) < len(full)


def test_doc_only_variant_uses_token_lookup_on_queries():
    enc = create_encoder("splade-doc")
    assert isinstance(enc.query, TokenWeightLookup)
    (v,) = enc.encode_queries(["capital of france capital"])
    assert v.as_dict() == {"capital": 1.0, "of": 1.0, "france": 1.0}  # no idf table: unit weights


def test_token_lookup_with_weight_table(tmp_path):
    table = tmp_path / "idf.json"
    table.write_text('{"capital": 2.5, "france": 4.0}')
    (v,) = TokenWeightLookup(weights=str(table)).encode(["capital of france"])
    assert v.as_dict() == {"france": 4.0, "capital": 2.5}


def test_unknown_encoder_is_a_clear_error():
    with pytest.raises(UnknownBackendError, match="unknown encoder 'nope'"):
        create_encoder("nope")


def test_invalid_limits():
    with pytest.raises(ValueError):
        SpladeMLM(max_length=1)
    with pytest.raises(ValueError):
        SpladeMLM(top_n=0)


def test_matches_the_plain_splade_formula_on_the_bundled_model(encoder, tiny_docs):
    """Ours (max-pool first, project real tokens only) against the formula computed plainly: full MLM
    logits of each text on its own, then max over its tokens of log1p(relu(logits))."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = resolve_model(DEFAULT_SPLADE)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path).eval()
    texts = [d.full_text for d in tiny_docs[:4]]
    ours = encoder.encode_docs(texts)
    for text, vector in zip(texts, ours, strict=True):
        enc = tokenizer(text, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            weights = torch.log1p(torch.relu(model(**enc).logits[0])).amax(dim=0)
        expected = {tokenizer.convert_ids_to_tokens(int(i)): float(weights[i]) for i in weights.nonzero()[:, 0]}
        got = vector.as_dict()
        assert got.keys() == expected.keys()
        assert max(abs(got[t] - expected[t]) for t in expected) < 1e-4
