"""Teacher → assistant distillation: a cross-encoder trained on graded (L1–L4) labels with a Pearson loss."""

import json

import pytest

from tests.helpers import need
from twostage_search.engine.errors import InputError
from twostage_search.rerankers.cross_encoder import CrossEncoderReranker
from twostage_search.rerankers.training import (
    Pair,
    TrainConfig,
    pearson_loss,
    read_pairs,
    train_cross_encoder,
    write_pairs,
)

torch = need("torch", "train")


def test_pearson_loss_exact_values():
    logits = torch.tensor([0.5, 1.0, 2.0, 4.0])
    assert float(pearson_loss(logits, logits * 3 + 1)) == pytest.approx(0.0, abs=1e-6)  # scale- and shift-free
    assert float(pearson_loss(logits, -logits)) == pytest.approx(2.0)
    assert float(pearson_loss(logits, torch.tensor([2.0, 2.0, 2.0, 2.0]))) == pytest.approx(1.0)  # no signal
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    loss = pearson_loss(x, torch.tensor([1.0, 3.0, 2.0, 4.0]))
    assert float(loss.detach()) == pytest.approx(1 - 0.8)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_trains_on_graded_labels_with_the_pearson_loss(tmp_path, tiny_docs):
    by_id = {d.doc_id: d.full_text for d in tiny_docs}
    graded = [  # an LLM judge's L1..L4 labels as a teacher would write them
        ("capital of france", "d01", 4),
        ("capital of france", "d02", 2),
        ("capital of france", "d09", 1),
        ("capital of germany", "d02", 4),
        ("capital of germany", "d01", 2),
        ("capital of germany", "d11", 1),
        ("young cats", "d07", 4),
        ("young cats", "d09", 1),
    ]
    path = tmp_path / "judged.jsonl"
    write_pairs([Pair(q, by_id[d], float(label)) for q, d, label in graded], path)
    pairs = read_pairs(path)
    assert [p.label for p in pairs] == [4.0, 2.0, 1.0, 4.0, 2.0, 1.0, 4.0, 1.0]
    config = TrainConfig(batch_size=4, max_length=64, epochs=3, learning_rate=1e-4, loss="pearson")
    out = train_cross_encoder(pairs, tmp_path / "assistant", config)
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["loss"] == "pearson" and record["pairs"] == 8
    # 1 − Pearson over the epochs: a model that learned the grades ends well below "no signal" (1.0)
    assert record["train_loss"] < 0.9
    assistant = CrossEncoderReranker(str(out), max_length=64)
    scores = assistant.score("capital of france", [by_id["d01"], by_id["d09"]])
    assert scores[0] > scores[1]  # the L4 document above the L1 one after training
    with pytest.raises(InputError):
        train_cross_encoder(pairs, tmp_path / "bad", TrainConfig(loss="hinge"))  # type: ignore[arg-type]
