"""Fine-tuning the upper layers of a BERT classifier over cached frozen lower layers, on a tiny BERT classifier
fixture (seeded random weights, not a real model) and hand-made token ids."""

import numpy as np
import pytest

from tests.helpers import need, tiny_bert_classifier

need("torch", "train")
need("transformers", "train")

from twostage_search.benchmarks.finetune import TrainSetting, UpperModel, frozen_states, train_epochs

# (query, item) pairs as token ids with their type ids, of different lengths; grades 1–4
PAIRS = [
    ([2, 5, 6, 3, 7, 8, 3], [0, 0, 0, 0, 1, 1, 1]),
    ([2, 5, 3, 9, 3], [0, 0, 0, 1, 1]),
    ([2, 11, 12, 13, 3, 14, 3], [0, 0, 0, 0, 0, 1, 1]),
    ([2, 15, 3, 16, 17, 18, 19, 3], [0, 0, 0, 1, 1, 1, 1, 1]),
    ([2, 20, 3, 21, 3], [0, 0, 0, 1, 1]),
    ([2, 22, 23, 3, 24, 25, 26, 3], [0, 0, 0, 0, 1, 1, 1, 1]),
]
GRADES = [4.0, 1.0, 3.0, 2.0, 1.0, 4.0]


def _model():
    return tiny_bert_classifier(vocab=30, hidden=16, layers=3, heads=2, intermediate=32, positions=16)


def _encoded():
    return [{"input_ids": ids, "token_type_ids": types} for ids, types in PAIRS]


def test_frozen_then_upper_layers_give_the_whole_models_logits():
    import torch

    model = _model()
    states = frozen_states(model, _encoded(), frozen=2, batch_size=4)  # batches mix lengths: padding is masked
    assert [len(s) for s in states] == [len(ids) for ids, _ in PAIRS]
    split, _ = UpperModel(model, frozen=2).predict(states)
    with torch.no_grad():
        whole = [
            float(model(input_ids=torch.tensor([i]), token_type_ids=torch.tensor([t])).logits[0, 0]) for i, t in PAIRS
        ]
    assert split == pytest.approx(whole, abs=1e-4)  # fp32 sums in another order; the logits are O(0.1)–O(1)


def test_training_lowers_the_loss_and_trains_only_the_upper_layers():
    model = _model()
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if ".layer.2." not in k}
    states = frozen_states(model, _encoded(), frozen=2)
    upper = UpperModel(model, frozen=2)
    upper.fit_affine(states, GRADES)
    saved = []
    history = train_epochs(
        upper, states, GRADES, TrainSetting(lr=3e-3, epochs=8, batch_size=3), lambda e, _: saved.append(e)
    )
    assert saved == list(range(1, 9))
    assert history[-1]["train_mse"] < history[0]["train_mse"]
    after = model.state_dict()
    for key, value in frozen_before.items():
        trained = key.startswith(("bert.pooler.", "classifier."))
        assert trained or bool((after[key] == value).all()), key
    assert not (
        after["bert.encoder.layer.2.output.dense.weight"]
        == _model().state_dict()["bert.encoder.layer.2.output.dense.weight"]
    ).all()


def test_a_checkpoint_reloads_with_the_same_predictions():
    model = _model()
    states = frozen_states(model, _encoded(), frozen=2)
    upper = UpperModel(model, frozen=2)
    upper.fit_affine(states, GRADES)
    train_epochs(upper, states, GRADES, TrainSetting(lr=3e-3, epochs=2, batch_size=3), lambda e, _: None)
    want = upper.predict(states)
    checkpoint = upper.state()
    fresh = UpperModel(_model(), frozen=2)
    fresh.load(checkpoint)
    got = fresh.predict(states)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
