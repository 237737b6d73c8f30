"""Fine-tuning the upper layers of a BERT classifier over cached frozen lower layers, on a tiny BERT classifier
fixture (seeded random weights, not a real model) and hand-made token ids."""

import math

import numpy as np
import pytest

from tests.helpers import need, tiny_bert_classifier

need("torch", "train")
need("transformers", "train")

from twostage_search.benchmarks.finetune import TrainSetting, UpperModel, frozen_states, ordinal_head, train_epochs
from twostage_search.benchmarks.soup import rival, seed_groups, soup_rows, soup_table, uniform_soup

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


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_the_ordinal_head_gives_cumulative_logit_probabilities_and_their_expected_grade():
    import torch

    upper = UpperModel(_model(), frozen=2, grades=(1, 2, 3, 4))
    upper.head.data = torch.tensor([1.0, 0.0, 1.0, 2.0])  # a = 1, cuts θ = 0, 1, 2
    logit = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # P(grade ≤ k) = σ(θ_k − logit); P(k) is the difference of neighbours
    want = []
    for x in (1.0, 0.0):
        cumulative = [_sigmoid(t - x) for t in (0.0, 1.0, 2.0)] + [1.0]
        want.append([cumulative[0]] + [cumulative[k] - cumulative[k - 1] for k in (1, 2, 3)])
    with torch.no_grad():
        probs = upper.probabilities(logit).numpy()
        expected = upper.grade(logit).numpy()
        nll = float(upper.loss(logit, torch.tensor([4.0, 1.0], dtype=torch.float64), "ordinal"))
    assert probs == pytest.approx(np.array(want), abs=1e-6)
    assert expected[0] == pytest.approx(2.5, abs=1e-6)  # symmetric around the middle cut
    assert expected[1] == pytest.approx(sum(g * p for g, p in zip((1, 2, 3, 4), want[1], strict=True)), abs=1e-6)
    assert nll == pytest.approx(-(math.log(want[0][3]) + math.log(want[1][0])) / 2, abs=1e-6)


def test_an_ordinal_loss_needs_the_ordinal_head():
    import torch

    upper = UpperModel(_model(), frozen=2)
    with pytest.raises(ValueError, match="ordinal head"):
        upper.loss(torch.zeros(2), torch.ones(2), "ordinal")


def test_the_ordinal_head_fitted_on_logits_gives_fit_ordinals_probabilities():
    import torch

    from twostage_search.rerankers.ordinal import fit_ordinal

    logits = np.array([-3.0, -2.0, -1.5, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 0.2, -0.4])
    grades = [1, 1, 2, 1, 2, 3, 2, 3, 4, 4, 4, 3]
    upper = UpperModel(_model(), frozen=2, grades=(1, 2, 3, 4))
    upper.head.data = torch.tensor(ordinal_head(logits, grades, (1, 2, 3, 4)), dtype=torch.float32)
    want = fit_ordinal(["logit"], logits[:, None], grades, (1, 2, 3, 4)).probabilities(logits[:, None])
    with torch.no_grad():
        got = upper.probabilities(torch.from_numpy(logits)).numpy()
    assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("loss", ["ordinal", "ordinal+mse"])
def test_ordinal_training_lowers_the_loss_and_a_checkpoint_reloads_with_the_same_predictions(loss):
    import torch

    model = _model()
    states = frozen_states(model, _encoded(), frozen=2)
    upper = UpperModel(model, frozen=2, grades=(1, 2, 3, 4))
    # the tiny random model's logits are all alike, so the head starts by hand: scale 1, cuts around them
    middle = float(upper.predict(states)[0].mean())
    upper.head.data = torch.tensor([1.0, middle - 1.0, middle, middle + 1.0])
    history = train_epochs(
        upper, states, GRADES, TrainSetting(lr=3e-3, epochs=8, batch_size=3, loss=loss), lambda e, _: None
    )
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    want = upper.predict(states)
    assert all(1.0 <= g <= 4.0 for g in want[1])  # E[grade] stays on the scale
    fresh = UpperModel(_model(), frozen=2, grades=(1, 2, 3, 4))
    fresh.load(upper.state())
    got = fresh.predict(states)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def _trained(seed):
    model = _model()
    states = frozen_states(model, _encoded(), frozen=2)
    upper = UpperModel(model, frozen=2)
    upper.fit_affine(states, GRADES)
    train_epochs(upper, states, GRADES, TrainSetting(lr=3e-3, epochs=2, batch_size=3, seed=seed), lambda e, _: None)
    return upper, states


def test_the_soup_of_two_identical_checkpoints_scores_as_the_checkpoint():
    upper, states = _trained(13)
    want = upper.predict(states)
    fresh = UpperModel(_model(), frozen=2)
    fresh.load(uniform_soup([upper.state(), upper.state()]))
    got = fresh.predict(states)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_the_soup_is_the_elementwise_mean_of_the_checkpoints():
    import torch

    checkpoints = [
        {
            "model": {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.0])},
            "affine": torch.tensor([1.0, 0.0]),
        },
        {
            "model": {"w": torch.tensor([[3.0, 2.0], [1.0, 0.0]]), "b": torch.tensor([3.0])},
            "affine": torch.tensor([2.0, 1.0]),
        },
        {
            "model": {"w": torch.tensor([[2.0, 5.0], [2.0, -1.0]]), "b": torch.tensor([-6.0])},
            "affine": torch.tensor([0.0, 2.0]),
        },
    ]
    soup = uniform_soup(checkpoints)
    assert soup["model"]["w"].tolist() == [[2.0, 3.0], [2.0, 1.0]]
    assert soup["model"]["b"].tolist() == [-1.0]
    assert soup["affine"].tolist() == [1.0, 1.0]
    assert "head" not in soup and soup["model"]["w"].dtype == torch.float32
    with pytest.raises(ValueError, match="different tensors"):
        uniform_soup([checkpoints[0], {"model": {"w": checkpoints[1]["model"]["w"]}}])


def test_a_soup_of_two_seeds_differs_from_each_and_reloads_with_the_same_scores(tmp_path):
    import torch

    (a, states), (b, _) = _trained(13), _trained(14)
    soup = uniform_soup([a.state(), b.state()])
    upper = UpperModel(_model(), frozen=2)
    upper.load(soup)
    want = upper.predict(states)
    assert not np.array_equal(want[0], a.predict(states)[0]) and not np.array_equal(want[0], b.predict(states)[0])
    torch.save(soup, tmp_path / "soup.pt")
    fresh = UpperModel(_model(), frozen=2)
    fresh.load(torch.load(tmp_path / "soup.pt"))
    got = fresh.predict(states)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_seed_groups_pair_the_runs_of_one_setting_and_epoch_that_differ_only_in_seed():
    def row(tag, seed, epoch, lr=1e-4):
        return {"tag": tag, "data": "crowdflower", "lr": lr, "loss": "mse", "seed": seed, "epoch": epoch}

    trials = [
        row("s", 13, 0), row("s", 13, 1), row("s", 13, 2),
        row("s-seed14", 14, 0), row("s-seed14", 14, 1), row("s-seed14", 14, 2),
        row("other", 13, 1, lr=5e-5),  # another setting with one seed: no soup
        {"tag": "s-soup13+14", "epoch": 1, "soup_of": ["s", "s-seed14"], "dev_kappa_quadratic": 0.5},
    ]  # fmt: skip
    assert seed_groups(trials) == {("s-soup13+14", 1): ["s", "s-seed14"], ("s-soup13+14", 2): ["s", "s-seed14"]}


def test_a_chosen_soup_is_compared_with_its_best_run_and_a_chosen_run_with_the_best_soup():
    runs = [
        {"tag": "s", "epoch": 1, "dev_kappa_quadratic": 0.50},
        {"tag": "s", "epoch": 2, "dev_kappa_quadratic": 0.56},
        {"tag": "s-seed14", "epoch": 1, "dev_kappa_quadratic": 0.53},
        {"tag": "s-seed14", "epoch": 2, "dev_kappa_quadratic": 0.58},
        {"tag": "other", "epoch": 2, "dev_kappa_quadratic": 0.60},  # not a member of the soups
    ]
    soups = [
        {"tag": "s-soup13+14", "epoch": 1, "soup_of": ["s", "s-seed14"], "dev_kappa_quadratic": 0.52},
        {"tag": "s-soup13+14", "epoch": 2, "soup_of": ["s", "s-seed14"], "dev_kappa_quadratic": 0.57},
    ]
    assert rival(runs + soups, soups[1]) is runs[3]
    assert rival(runs + soups, runs[4]) is soups[1]
    assert rival(runs, runs[4]) is None
    table = soup_table(runs + soups)
    assert table[2] == "| s-soup13+14 | 1 | 0.5000 | 0.5300 | 0.5150 | 0.5300 | 0.5200 |"
    assert table[3] == "| s-soup13+14 | 2 | 0.5600 | 0.5800 | 0.5700 | 0.5800 | 0.5700 |"


def test_soup_rows_save_and_score_the_soup_of_each_setting_and_epoch(tmp_path):
    import torch

    (a, states), (b, _) = _trained(13), _trained(14)
    torch.save(a.state(), tmp_path / "ckpt-s-e2.pt")
    torch.save(b.state(), tmp_path / "ckpt-s-seed14-e2.pt")
    trials = [
        {"tag": t, "data": "cf", "lr": 1e-3, "loss": "mse", "seed": seed, "epoch": 2, "dev_kappa_quadratic": 0.5}
        for t, seed in (("s", 13), ("s-seed14", 14))
    ]
    model = _model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    heads = {"s": (), "s-seed14": ()}
    rows = soup_rows(model, base, heads, trials, tmp_path, 2, lambda u: (float(u.predict(states)[1][0]), [1.5]))
    want = UpperModel(_model(), frozen=2)
    want.load(uniform_soup([a.state(), b.state()]))
    first = float(want.predict(states)[1][0])
    assert rows == [
        {
            "tag": "s-soup13+14",
            "epoch": 2,
            "soup_of": ["s", "s-seed14"],
            "dev_kappa_quadratic": first,
            "dev_cuts": [1.5],
        }
    ]
    assert heads["s-soup13+14"] == ()
    saved = UpperModel(_model(), frozen=2)
    saved.load(torch.load(tmp_path / "ckpt-s-soup13+14-e2.pt"))
    assert np.array_equal(saved.predict(states)[1], want.predict(states)[1])
