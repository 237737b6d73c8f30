"""The dense build-length study's arithmetic (FLOPs, a build's padding, the batch-1 reuse rule) on hand-checked
numbers, and its batch-1 shortcut against a direct encoding with the real bundled model."""

import numpy as np

from tests.helpers import need
from twostage_search.benchmarks.studies.dense_build_length import (
    build_flops,
    dense_run,
    encoder_flops,
    padded_shapes,
    reusable_rows,
    variant_vectors,
)
from twostage_search.benchmarks.studies.dense_build_speed import Variant, token_lengths


def test_encoder_flops_by_hand():
    # one layer, h=1, ffn=4: per token 4·1 + 2·1·4 = 12 multiply-adds, attention 2·n·1; ×2 flops
    assert encoder_flops(1, layers=1, hidden=1, ffn=4) == 2 * (12 + 2)
    assert encoder_flops(2, layers=1, hidden=1, ffn=4) == 2 * (2 * 12 + 2 * 2 * 2)
    assert encoder_flops(3, layers=2, hidden=1, ffn=4) == 2 * encoder_flops(3, layers=1, hidden=1, ffn=4)


def test_padded_shapes_sort_within_chunks():
    # chunk [5, 1, 3] → sorted 1, 3, 5 → batches (1, 3) and (5); chunk [2, 4] → one batch of width 4
    assert padded_shapes([5, 1, 3, 2, 4], batch_size=2, chunk=3) == [(2, 3), (1, 5), (2, 4)]
    assert padded_shapes([5, 1, 3], batch_size=1, chunk=3) == [(1, 1), (1, 3), (1, 5)]


def test_build_flops_truncates_then_pads():
    report = build_flops([300, 100], max_length=128, batch_size=2)
    exact = encoder_flops(128) + encoder_flops(100)
    assert report["mean_tokens"] == 114.0
    assert report["gflop_per_doc"] == round(exact / 2 / 1e9, 3)
    assert report["gflop_per_doc_padded"] == round(2 * encoder_flops(128) / 2 / 1e9, 3)


def test_reusable_rows_are_those_no_length_cuts_differently():
    lengths = [100, 200, 300, 128, 129]
    assert reusable_rows(lengths, 128, 256).tolist() == [0, 3]
    assert reusable_rows(lengths, 512, 256).tolist() == [0, 1, 3, 4]


def test_dense_run_top_by_score_ties_by_doc_id():
    docs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    run = dense_run(np.array([[1.0, 0.0]], dtype=np.float32), docs, ["c", "b", "a"], ["q"])
    assert [d for d, _ in run["q"]] == ["a", "c", "b"]


def test_batch1_shortcut_equals_a_direct_encoding(tmp_path, tiny_docs):
    need("onnxruntime", "dense")
    need("tokenizers", "dense")
    from twostage_search.engine.dense import DenseEncoder

    texts = [d.full_text for d in tiny_docs]
    lengths = token_lengths(texts)
    short = 1 + sorted(lengths)[len(lengths) // 2]  # some documents fit, the others are cut
    assert min(lengths) < short < max(lengths)
    baseline = (DenseEncoder(threads=1).encode_docs(texts), {"batch_size": 1, "max_length": 256})
    variant = Variant(batch_size=1, max_length=short, threads=1)
    vectors, how = variant_vectors(variant, texts, lengths, tmp_path, baseline)
    direct = DenseEncoder(max_length=short, threads=1).encode_docs(texts)
    assert how["encoded"] == sum(n > short for n in lengths) and how["reused"] == sum(n <= short for n in lengths)
    assert np.array_equal(vectors, direct)
    same, how = variant_vectors(Variant(1, 256, 1), texts, lengths, tmp_path, baseline)
    assert how == {"encoded": 0, "from": "baseline index"} and np.array_equal(same, baseline[0])
    cached, _ = variant_vectors(variant, texts, lengths, tmp_path, None)  # from the cache, nothing encoded
    assert np.array_equal(cached, direct)


def test_speed_study_reports_every_variant_and_its_tokens(tiny_docs):
    need("onnxruntime", "dense")
    need("tokenizers", "dense")
    import argparse

    from tests.helpers import TINY
    from twostage_search.benchmarks.studies.dense_build_speed import run

    args = argparse.Namespace(dataset=TINY, docs=3, block=2, variants="b1-l256-t1,b2-l8-t1", threads=None)
    report = run(args)
    lengths = token_lengths([d.full_text for d in tiny_docs[:3]])
    assert min(lengths) > 8  # so every document is cut to 8 tokens at l8
    assert report["docs"] == 3 and list(report["variants"]) == ["b1-l256-t1", "b2-l8-t1"]
    assert report["variants"]["b2-l8-t1"]["mean_tokens"] == 8.0
    assert report["mean_tokens_untruncated"] == round(sum(lengths) / 3, 1)
    assert report["variants"]["b1-l256-t1"]["speedup"] == 1.0
