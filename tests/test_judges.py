"""Graded judge evaluation: measures on hand-computed examples, dev thresholds, the split, and the
``judges`` / ``teacher_assistant`` benchmarks end to end on a tiny graded set with the real models."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import FIXTURES, need
from twostage_search.benchmarks.graded import (
    agreement,
    apply_thresholds,
    fit_thresholds,
    load_graded,
    load_submissions,
    place,
    read_label_file,
    split_queries,
    submission_rows,
)
from twostage_search.benchmarks.studies.llm_rerank import auc, binary_metrics
from twostage_search.engine.errors import InputError

need("sklearn", "bench")
GRADED = FIXTURES / "graded"


def test_agreement_on_a_hand_computed_confusion_matrix():
    human = [0, 0, 1, 1, 2, 2, 3, 3]
    judge = [0, 1, 1, 1, 2, 3, 3, 2]
    m = agreement(human, judge, [0, 1, 2, 3], cut=2)
    # By hand: p_o = 5/8; judge marginals 1,3,2,2 of 8, human 2 each → p_e = 16/64; κ = (5/8 − 1/4)/(3/4).
    assert m["kappa"] == pytest.approx(0.5)
    # Linear weights |i−j|/3: observed 3·(1/3)/8 = 1/8; expected 0.25·(6+12+8+12)/(8·3) = 19/48 → 1 − 6/19.
    assert m["kappa_linear"] == pytest.approx(13 / 19)
    # Quadratic weights (i−j)²/9: observed 3·(1/9)/8 = 1/24; expected (1/4)·(1·14 + 3·6 + 2·6 + 2·14)/(8·9) = 1/4.
    assert m["kappa_quadratic"] == pytest.approx(1 - (1 / 24) / (1 / 4))
    assert m["acc@4"] == pytest.approx(5 / 8) and m["acc@2"] == 1.0
    # Per-grade F1: 2/3, 4/5, 1/2, 1/2.
    assert m["macro_f1@4"] == pytest.approx((2 / 3 + 0.8 + 0.5 + 0.5) / 4)
    assert m["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert m["macro_f1@2"] == 1.0 and m["pairs"] == 8
    with pytest.raises(InputError):
        agreement([], [], [0, 1], 1)


def test_llm_rerank_binary_measures_by_hand():
    pred, gold = [True, True, False, False, True], [True, False, False, True, True]
    # 3 of 5 agree. "relevant": tp 2, fp 1, fn 1 → F1 4/6; "not relevant": tp 1, fp 1, fn 1 → F1 2/4.
    assert binary_metrics(pred, gold) == {"acc@2": 0.6, "macro_f1@2": round((4 / 6 + 0.5) / 2, 4)}
    # A class that is never true nor predicted scores F1 0, so the macro mean halves.
    assert binary_metrics([True, True], [True, True]) == {"acc@2": 1.0, "macro_f1@2": 0.5}
    # Relevant 0.9, 0.4 against non-relevant 0.4, 0.1: pairs won 1, 1, ½ (tie), 1 of 4.
    assert auc([0.9, 0.4, 0.4, 0.1], [True, True, False, False]) == 0.875
    assert math.isnan(auc([0.3, 0.2], [True, True]))


def test_thresholds_from_dev_quantiles_recover_a_monotone_grading():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    grades = [1, 1, 2, 2, 3, 3, 4, 4]
    t = fit_thresholds(scores, grades, [1, 2, 3, 4])
    # numpy's linear quantiles at 0.25/0.5/0.75 of 8 sorted values: positions 1.75, 3.5, 5.25.
    assert t == pytest.approx([0.275, 0.45, 0.625])
    assert apply_thresholds(scores, t, [1, 2, 3, 4]) == grades
    assert apply_thresholds([-5.0, 9.0], t, [1, 2, 3, 4]) == [1, 4]


def test_threshold_rules_are_cross_fitted_over_two_halves_of_the_dev_queries():
    from twostage_search.benchmarks.graded import GradedPair, dev_halves, threshold_rule

    dev = [GradedPair(f"q{q}", f"d{g}", g) for q in range(8) for g in (1, 2, 3, 4)]  # each query: one pair a grade
    a, b = dev_halves(dev)
    assert len(a) == len(b) == 16 and sorted(a + b) == list(range(32)) and (a, b) == dev_halves(dev)
    assert not {dev[i].query_id for i in a} & {dev[i].query_id for i in b}  # whole queries in each half
    # a score equal to the grade: the grade-mix cuts of either half (1.75, 2.5, 3.25) grade the other half exactly
    exact = threshold_rule([float(p.grade) for p in dev], dev, (1, 2, 3, 4), 3)
    assert exact == {"dev grade mix": 1.0, "max dev kappa": 1.0}
    # the grade reversed: the grade-mix cuts give 5 − grade, quadratic κ 1 − 5 / 2.5 = −1 on each half
    assert threshold_rule([-float(p.grade) for p in dev], dev, (1, 2, 3, 4), 3)["dev grade mix"] == pytest.approx(-1.0)


def test_split_is_seeded_disjoint_and_complete():
    ids = [f"q{i}" for i in range(10)]
    a = split_queries(ids, {"train": 0.4, "dev": 0.2, "test": 0.4})
    assert a == split_queries(list(reversed(ids)), {"train": 0.4, "dev": 0.2, "test": 0.4})
    assert [len(v) for v in a.values()] == [4, 2, 4]
    assert sorted(q for part in a.values() for q in part) == sorted(ids)


def test_graded_set_scale_cut_samples_and_submissions():
    ds = load_graded(GRADED)
    assert ds.grades == (1, 2, 3, 4) and ds.cut == 3  # CrowdFlower's scale: 3–4 relevant
    assert len(ds.pairs("test")) == 12 and {p.query_id for p in ds.pairs("test")} == set(ds.splits["test"])
    sample = ds.sample("test", 4, per_query=2)
    assert len(sample) == 4 and len({p.query_id for p in sample}) == 2 and sample == ds.sample("test", 4, 2)
    subs = load_submissions(ds, GRADED / "submissions")
    assert sorted(subs) == ["constant", "perfect"] and len(subs["perfect"]) == 30
    assert read_label_file(GRADED / "submissions" / "constant.txt")[("q00", "d000")] == 3
    with pytest.raises(InputError):
        load_graded(GRADED, cut=None, parts={"dev": 1.0}).pairs("test")


def test_submission_rows_score_each_label_file_on_the_test_pairs_best_first(tmp_path):
    ds = load_graded(GRADED)
    test = ds.sample("test", 4, per_query=2)
    rows = submission_rows(ds, GRADED / "submissions", test, all_pairs=True)
    assert [r["judge"] for r in rows] == ["perfect", "constant"]  # κ 1 (a copy of the grades), then κ 0 (all 3s)
    assert rows[0]["kappa"] == 1.0 and rows[0]["kappa_all_pairs"] == 1.0 and rows[1]["kappa"] == 0.0
    assert all(r["kind"] == "submission" and r["pairs"] == 4 for r in rows)
    assert "kappa_all_pairs" not in submission_rows(ds, GRADED / "submissions", test)[0]
    # a file that leaves one sampled test pair unlabelled is left out
    lines = (GRADED / "submissions" / "perfect.txt").read_text().splitlines()
    (tmp_path / "short.txt").write_text("\n".join(x for x in lines if x.split()[2] != test[0].doc_id) + "\n")
    (tmp_path / "whole.txt").write_text("\n".join(lines) + "\n")
    assert [r["judge"] for r in submission_rows(ds, tmp_path, test)] == ["whole"]
    judges = [{"judge": "a", "kappa": 0.5}, {"judge": "b", "kappa": 1.0}]
    place(judges, rows)  # only perfect (κ 1) beats a; nobody beats b (a tie is no better)
    assert [j["rank_by_kappa"] for j in judges] == ["2 of 3", "1 of 3"]


def test_judges_command_scores_lore_a_thresholded_cross_encoder_and_ranks_them(tmp_path, capsys):
    need("llama_cpp", "llm")
    need("sentence_transformers", "rerank")
    from twostage_search.benchmarks.studies.judges import main

    out = tmp_path / "report.json"
    store = tmp_path / "lore.jsonl"
    argv = ["--dataset", str(GRADED), "--judge", "lore", "--judge", "cross-encoder", "--test-pairs", "4"]
    argv += ["--per-query", "2", "--submissions", str(GRADED / "submissions"), "--judgements", str(store)]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    lore, ce = report["judges"]
    assert lore["pairs"] == ce["pairs"] == 4 and sum(map(sum, lore["confusion"])) == 4
    assert lore["tokens_out_per_pair"] == 1 and lore["pairs_per_s"] > 0  # label-only: one token per pair
    assert len(ce["thresholds"]) == 3 and ce["thresholds"] == sorted(ce["thresholds"])
    perfect = next(s for s in report["submissions"] if s["judge"] == "perfect")
    constant = next(s for s in report["submissions"] if s["judge"] == "constant")
    assert perfect["kappa"] == 1.0 and perfect["kappa_all_pairs"] == 1.0 and constant["kappa"] == 0.0
    for row in (lore, ce):  # nobody beats a perfect copy: rank 2 of 3 when κ > 0, else 2 or 3
        assert row["rank_by_kappa"] == ("2 of 3" if row["kappa"] >= 0 else "3 of 3")
    # A rerun reads the stored judgements: same grades, nothing judged again.
    lines = store.read_text().count("\n")
    assert main(argv) == 0 and store.read_text().count("\n") == lines == 4
    printed = capsys.readouterr().out
    assert printed.startswith("graded: 4 test pairs (relevant = grade ≥ 3); load ") and "| lore (llama-cpp" in printed


def test_teacher_assistant_end_to_end_tiny(tmp_path, capsys):
    need("llama_cpp", "llm")
    need("datasets", "train")
    from twostage_search.benchmarks.studies.teacher_assistant import main

    out = tmp_path / "ta.json"
    argv = ["--dataset", str(GRADED), "--train-pairs", "6", "--dev-pairs", "6", "--test-pairs", "4", "--per-query", "2"]
    argv += ["--epochs", "1", "--max-length", "48", "--timing-pairs", "2", "--judgements", str(tmp_path / "j.jsonl")]
    assert main([*argv, "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    names = [r["judge"] for r in report["rows"]]
    assert names[0].startswith("teacher") and len(names) == 4
    assert all(r["pairs"] == 4 for r in report["rows"])
    assert report["cost"]["pairs"] == 2 and report["cost"]["assistant_over_teacher"] > 0
    assert (tmp_path / "work" / "teacher" / "training.json").is_file()
    printed = capsys.readouterr().out.splitlines()  # the trainer prints its own lines first
    head = next(i for i, line in enumerate(printed) if line.startswith("graded: {'train': "))
    assert printed[head + 1].startswith("| judge") and len(printed) == head + 8  # header, table (2 + 4 rows), cost
    assert printed[-1].startswith("cost on 2 test pairs, interleaved: teacher ")
