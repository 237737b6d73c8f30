"""The ``graded-ce`` reranker: a fine-tuned delta over an ONNX base, rebuilt at load time, judged with P(grade).

Fixtures: a tiny BERT classifier (random weights, not a real model) exported to fp32 ONNX with a word-level
tokenizer of a dozen words; its "fine-tuned" copy has its top layer, pooler and classifier changed by hand.
"""

import math
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import need, tiny_bert_classifier

need("torch", "export")
need("transformers", "export")
need("onnx", "export")
need("safetensors", "export")

from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.graded_ce import (
    DELTA_FILE,
    GradedCEReranker,
    apply_delta,
    save_delta,
    trained_names,
)
from twostage_search.rerankers.onnx_to_torch import torch_from_onnx
from twostage_search.rerankers.ordinal import OrdinalModel

WORDS = ["red", "shoe", "shoes", "blue", "sink", "steel", "kitchen", "hose", "garden", "running", "nike"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate([*SPECIAL, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(path))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A folder holding the tiny base as ``model.onnx`` (fp32) and ``tokenizer.json``."""
    import torch

    folder = tmp_path_factory.mktemp("tiny-base")
    model = tiny_bert_classifier(
        vocab=len(SPECIAL) + len(WORDS), hidden=32, layers=2, heads=4, intermediate=48, positions=40
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    ids = torch.tensor([[2, 5, 6, 3, 7, 3]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1]])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), types),
            str(folder / "model.onnx"),
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    _tokenizer(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def finetuned(base):
    """The base read back into torch, with layer 1 (of 0–1), the pooler and the classifier changed."""
    import torch

    model = torch_from_onnx(base / "model.onnx")
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("bert.encoder.layer.1.", "bert.pooler.", "classifier.")):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def _logits(model, pairs, tokenizer_path):
    """The model's logit of each (query, passage) pair, one pair at a time, unpadded."""
    import torch

    from twostage_search.rerankers.onnx_to_torch import tokenizer_from_file

    tok = tokenizer_from_file(tokenizer_path)
    with torch.no_grad():
        return [float(model(**tok(q, p, return_tensors="pt")).logits[0, 0]) for q, p in pairs]


def test_the_delta_holds_only_the_trained_tensors():
    names = [
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.output.dense.weight",
        "bert.encoder.layer.1.output.dense.weight",
        "bert.encoder.layer.11.attention.self.query.bias",
        "bert.pooler.dense.bias",
        "classifier.weight",
    ]
    assert trained_names(names, 1) == names[2:]
    assert trained_names(names, 8) == names[3:]


def test_the_delta_over_the_base_rebuilds_the_finetuned_model(base, finetuned, tmp_path):
    import torch

    save_delta(finetuned, 1, tmp_path / "delta32.safetensors", dtype="float32")
    rebuilt = apply_delta(torch_from_onnx(base / "model.onnx"), tmp_path / "delta32.safetensors")
    pairs = [("red shoe", "red running shoes"), ("kitchen sink", "blue garden hose nike")]
    assert _logits(rebuilt, pairs, base / "tokenizer.json") == _logits(finetuned, pairs, base / "tokenizer.json")
    expected = finetuned.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in rebuilt.state_dict().items())

    save_delta(finetuned, 1, tmp_path / "delta16.safetensors")  # fp16: each trained tensor rounded, nothing else
    half = apply_delta(torch_from_onnx(base / "model.onnx"), tmp_path / "delta16.safetensors")
    plain = torch_from_onnx(base / "model.onnx").state_dict()
    trained = set(trained_names(list(plain), 1))
    assert len(trained) == 16 + 2 + 2  # one layer's 16 tensors, the pooler's 2, the classifier's 2
    for k, v in half.state_dict().items():
        want = expected[k].half().float() if k in trained else plain[k]
        assert v.dtype == torch.float32 and torch.equal(v, want), k


def test_a_delta_that_does_not_fit_is_refused(base, tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"classifier.weight": torch.zeros(3, 7)}, str(tmp_path / "shape.safetensors"))
    save_file({"classifier.nothing": torch.zeros(1)}, str(tmp_path / "name.safetensors"))
    for bad in ("shape", "name"):
        with pytest.raises(InputError, match="does not fit"):
            apply_delta(torch_from_onnx(base / "model.onnx"), tmp_path / f"{bad}.safetensors")


CUTS = (-1.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def folder(base, finetuned, tmp_path_factory):
    """A graded-ce model folder: the fp32 delta and the ordinal model P(grade ≤ k) = σ(θ_k − logit)."""
    out = tmp_path_factory.mktemp("graded-ce")
    save_delta(finetuned, 1, out / DELTA_FILE, dtype="float32")
    OrdinalModel(
        ("logit",), (0.0,), (1.0,), (1.0,), CUTS, (1, 2, 3, 4), meta={"base": str(base), "max_length": 16}
    ).save(out / "model.json")
    return out


def _by_hand(logit):
    """P(L1..L4) of the fixture's ordinal model, computed here: differences of σ(θ_k − logit)."""
    cumulative = [1 / (1 + math.exp(-(c - logit))) for c in CUTS]
    return [cumulative[0], cumulative[1] - cumulative[0], cumulative[2] - cumulative[1], 1 - cumulative[2]]


DOCS = [
    Candidate("d3", 0.0, "steel kitchen sink", "kitchen sink"),
    Candidate("d1", 0.0, "red running shoes by nike", "red running shoes"),
    Candidate("d2", 0.0, "a description only"),  # no title: its text is read
    Candidate("d0", 0.0, "steel kitchen sink", "kitchen sink"),  # ties d3
]


def test_judge_gives_p_grade_and_expected_grade_from_the_finetuned_logit(base, finetuned, folder):
    reranker = GradedCEReranker(str(folder), batch_size=3)
    query = Query("q1", "red shoes")
    passages = ["kitchen sink", "red running shoes", "a description only", "kitchen sink"]
    logits = _logits(finetuned, [(query.text, p) for p in passages], base / "tokenizer.json")
    judgements, cost = reranker.judge_with_cost(query, DOCS)
    assert [j.doc_id for j in judgements] == ["d3", "d1", "d2", "d0"]
    for j, logit in zip(judgements, logits, strict=True):
        probs = _by_hand(logit)
        assert j.probs == pytest.approx(probs, abs=1e-5)
        assert j.expected == pytest.approx(sum((g + 1) * p for g, p in enumerate(probs)), abs=1e-5)
        assert j.label == 1 + int(np.argmax(probs)) and j.source == "graded-ce"
    # tokens per pair: [CLS] red shoes [SEP] (4), the passage's words (2, 3, 3 unknown words, 2), [SEP]
    assert cost.docs == 4 and cost.tokens_in == (4 + 3) + (4 + 4) + (4 + 4) + (4 + 3)


def test_rerank_orders_by_expected_grade_ties_by_doc_id(folder):
    reranker = GradedCEReranker(str(folder))
    query = Query("q1", "red shoes")
    expected = {j.doc_id: j.expected for j in reranker.judge(query, DOCS)}
    ranking, cost = reranker.rerank_with_cost(query, DOCS)
    assert ranking.doc_ids == sorted(expected, key=lambda d: (-expected[d], d))
    assert ranking.doc_ids.index("d0") == ranking.doc_ids.index("d3") - 1  # same text, same score: by doc id
    assert cost.stage == "rerank" and cost.docs == 4
    assert len(reranker.rerank(query, [])) == 0 and reranker.judge(query, []) == []


def test_threads_sharing_one_reranker_get_the_single_thread_answer(folder):
    reranker = GradedCEReranker(str(folder), batch_size=2)
    queries = [Query(f"q{i}", q) for i, q in enumerate(["red shoes", "kitchen sink", "garden hose", "nike"])]
    alone = {q.query_id: reranker.judge(q, DOCS) for q in queries}
    got: dict[str, list] = {}

    def work(q):
        for _ in range(5):
            got[q.query_id] = reranker.judge(q, DOCS)
            assert got[q.query_id] == alone[q.query_id]

    threads = [threading.Thread(target=work, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone


def test_a_model_may_use_another_models_delta(base, folder, tmp_path):
    OrdinalModel(
        ("logit",), (0.0,), (1.0,), (1.0,), CUTS, (1, 2, 3, 4), meta={"base": str(base), "delta_model": str(folder)}
    ).save(tmp_path / "model.json")
    query = Query("q1", "red shoes")
    assert GradedCEReranker(str(tmp_path)).judge(query, DOCS) == GradedCEReranker(str(folder)).judge(query, DOCS)


def test_a_model_reading_title_and_description_is_fed_both(base, finetuned, folder, tmp_path):
    (tmp_path / DELTA_FILE).write_bytes((folder / DELTA_FILE).read_bytes())
    meta = {"base": str(base), "passage": "ce_text", "max_length": 32}
    OrdinalModel(("logit",), (0.0,), (1.0,), (1.0,), CUTS, (1, 2, 3, 4), meta=meta).save(tmp_path / "model.json")
    query = Query("q1", "red shoes")
    # title and text joined as the cross-encoder joins them; the untitled item reads its text alone
    passages = ["kitchen sink steel kitchen sink", "red running shoes red running shoes by nike", "a description only"]
    want = _logits(finetuned, [(query.text, p) for p in passages], base / "tokenizer.json")
    got, cost = GradedCEReranker(str(tmp_path)).logits(query, DOCS[:3])
    assert got == pytest.approx(want, abs=1e-4)
    assert cost.tokens_in == (4 + 6) + (4 + 9) + (4 + 4)  # [CLS] red shoes [SEP] + passage words + [SEP]
    meta["passage"] = "description"
    OrdinalModel(("logit",), (0.0,), (1.0,), (1.0,), CUTS, (1, 2, 3, 4), meta=meta).save(tmp_path / "model.json")
    with pytest.raises(InputError, match=r"meta\.passage"):
        GradedCEReranker(str(tmp_path))


def test_bad_models_and_input_are_refused(folder, tmp_path):
    with pytest.raises(InputError, match=r"delta\.safetensors"):
        GradedCEReranker(str(tmp_path))
    (tmp_path / DELTA_FILE).write_bytes((folder / DELTA_FILE).read_bytes())
    OrdinalModel(("ce",), (0.0,), (1.0,), (1.0,), CUTS, (1, 2, 3, 4)).save(tmp_path / "model.json")
    with pytest.raises(InputError, match="reads 'logit'"):
        GradedCEReranker(str(tmp_path))
    OrdinalModel(("logit", "colour"), (0.0, 0.0), (1.0, 1.0), (1.0, 1.0), CUTS, (1, 2, 3, 4)).save(
        tmp_path / "model.json"
    )
    with pytest.raises(InputError, match="colour"):
        GradedCEReranker(str(tmp_path))
    with pytest.raises(InputError, match="batch_size"):
        GradedCEReranker(str(folder), batch_size=0)
    with pytest.raises(InputError, match="unknown bundled model"):
        GradedCEReranker("bundled:no-such-model")
    with pytest.raises(InputError, match="2 logit logits for 4 candidates"):
        GradedCEReranker(str(folder)).judgements(Query("q", "red"), DOCS, [0.0, 1.0])


THREE = [
    Candidate("sink", 0.0, "", "Stainless Steel Double Bowl Kitchen Sink"),
    Candidate("shoes", 0.0, "", "Nike Men's Red Running Shoes"),
    Candidate("hose", 0.0, "", "50 ft Garden Hose with Spray Nozzle"),
]


def test_the_bundled_model_rebuilds_over_the_bundled_base_and_ranks_the_matching_title_first():
    reranker = GradedCEReranker()
    query, docs = Query("q", "red running shoes"), THREE
    ranking = reranker.rerank(query, docs)
    assert ranking.doc_ids[0] == "shoes"
    judged = {j.doc_id: j for j in reranker.judge(query, docs)}
    assert judged["shoes"].label == 4 and judged["sink"].label <= 2 and judged["hose"].label <= 2
    assert all(abs(sum(j.probs) - 1) < 1e-9 for j in judged.values())


def test_the_bundled_stacked_variant_ranks_the_matching_title_first():
    need("lightgbm", "graded")
    reranker = GradedCEReranker("bundled:graded-ce-stacked-crowdflower")
    ranking, cost = reranker.rerank_with_cost(Query("q", "red running shoes"), THREE)
    assert ranking.doc_ids[0] == "shoes"
    assert cost.docs == 3 and cost.tokens_in > 0


def test_the_bundled_title_and_description_variant_reads_both_and_ranks_the_matching_item_first():
    reranker = GradedCEReranker("bundled:graded-ce-text-crowdflower")
    assert reranker.passage == "ce_text" and reranker.max_length == 128
    docs = [*THREE[:1], Candidate("shoes", 0.0, "Lightweight mesh upper, cushioned sole", THREE[1].title), THREE[2]]
    query = Query("q", "red running shoes")
    judged = {j.doc_id: j for j in reranker.judge(query, docs)}
    assert reranker.rerank(query, docs).doc_ids[0] == "shoes"
    assert judged["shoes"].label >= 3 and judged["sink"].label <= 2 and judged["hose"].label <= 2
    # the description is read: the same title with and without it scores differently
    with_text, _ = reranker.logits(query, docs[1:2])
    title_only, _ = reranker.logits(query, THREE[1:2])
    assert with_text != title_only


# ---------------------------------------------------------------------- the model exported as one ONNX graph
@pytest.fixture(scope="module")
def exported(folder, tmp_path_factory):
    """The fixture model exported by the CLI, fp32 and INT8 (per-channel weights)."""
    from twostage_search.cli import main

    out = tmp_path_factory.mktemp("exported")
    for precision in ("fp32", "int8"):
        code = main(["export-onnx", str(folder), str(out / precision), "--graded-ce", "--precision", precision])
        assert code == 0
    return out


def test_the_export_is_a_graded_ce_folder_with_the_same_ordinal_model(folder, exported):
    source = OrdinalModel.load(folder / "model.json")
    for precision in ("fp32", "int8"):
        out = exported / precision
        assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.json", "model.onnx", "tokenizer.json"]
        model = OrdinalModel.load(out / "model.json")
        assert model.meta["onnx"]["precision"] == precision and model.meta["onnx"]["model"] == str(folder)
        assert model.meta["base"] == source.meta["base"] and model.meta["max_length"] == 16
        assert (model.features, model.cuts, model.grade_cuts) == (source.features, source.cuts, source.grade_cuts)


def test_the_fp32_export_judges_as_the_torch_model(folder, exported):
    query = Query("q1", "red shoes")
    torch_model, onnx_model = GradedCEReranker(str(folder)), GradedCEReranker(str(exported / "fp32"))
    want, want_cost = torch_model.judge_with_cost(query, DOCS)
    got, cost = onnx_model.judge_with_cost(query, DOCS)
    assert [j.doc_id for j in got] == [j.doc_id for j in want] and cost.tokens_in == want_cost.tokens_in
    for g, w in zip(got, want, strict=True):
        assert g.probs == pytest.approx(w.probs, abs=1e-4) and g.label == w.label and g.source == "graded-ce"
    assert onnx_model.rerank(query, DOCS).doc_ids == torch_model.rerank(query, DOCS).doc_ids


def test_the_int8_export_scores_within_the_export_check_and_serves_threads(folder, exported):
    query = Query("q1", "red shoes")
    passages = [c.title or c.text for c in DOCS]
    want, _ = GradedCEReranker(str(folder)).score(query.text, passages)
    reranker = GradedCEReranker(str(exported / "int8"))
    got, tokens = reranker.score(query.text, passages)
    assert tokens == (4 + 3) + (4 + 4) + (4 + 4) + (4 + 3)
    assert max(abs(g - w) for g, w in zip(got, want, strict=True)) <= 1.0  # the export's own check bound
    assert got[0] == got[3]  # one pair per run: a score never depends on its batch-mates
    alone = reranker.judge(query, DOCS)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(reranker.judge(query, DOCS))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [alone] * 4


def test_bad_exports_are_refused(folder, exported, tmp_path, capsys):
    from twostage_search.cli import main
    from twostage_search.rerankers.graded_ce_export import export_graded_ce

    with pytest.raises(InputError, match="already an ONNX"):
        export_graded_ce(str(exported / "int8"), tmp_path / "again")
    with pytest.raises(InputError, match="precision"):
        export_graded_ce(str(folder), tmp_path / "bad", precision="int4")  # type: ignore[arg-type]
    assert main(["export-onnx", str(folder), str(tmp_path / "x"), "--graded-ce", "--bi-encoder"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "again").exists() and not (tmp_path / "bad").exists() and not (tmp_path / "x").exists()


def test_the_bundled_title_and_description_variant_exported_to_int8_ranks_the_matching_item_first(tmp_path):
    from twostage_search.rerankers.graded_ce_export import export_graded_ce

    info = export_graded_ce("bundled:graded-ce-text-crowdflower", tmp_path / "int8")
    assert info["precision"] == "int8" and info["max_abs_logit_diff"] <= 1.0
    reranker = GradedCEReranker(str(tmp_path / "int8"))
    assert reranker.passage == "ce_text" and reranker.max_length == 128
    docs = [*THREE[:1], Candidate("shoes", 0.0, "Lightweight mesh upper, cushioned sole", THREE[1].title), THREE[2]]
    judged = {j.doc_id: j for j in reranker.judge(Query("q", "red running shoes"), docs)}
    assert reranker.rerank(Query("q", "red running shoes"), docs).doc_ids[0] == "shoes"
    assert judged["shoes"].expected > max(judged["sink"].expected, judged["hose"].expected)
