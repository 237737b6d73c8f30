"""``twostage bench`` and its parts: the BEIR loader, system configs, the runner (measures checked by hand
from the run files), reports and plots, ``fetch-beir`` without network, and the CLI's exit codes."""

import json
import math
import re
import shutil
import sys
import types
import zipfile
from pathlib import Path

import pytest

from tests.helpers import TINY
from twostage_search.benchmarks.configs import load_system, load_systems, parse_system
from twostage_search.benchmarks.datasets import available_splits, load_beir
from twostage_search.benchmarks.evaluation import bootstrap_ci, evaluate, holm, paired_ttest, randomisation_test
from twostage_search.benchmarks.fetch import fetch_beir
from twostage_search.benchmarks.runner import BenchSettings, run_benchmark
from twostage_search.cli import main
from twostage_search.engine.errors import InputError, TwoStageError

SYSTEMS = Path(__file__).parent.parent / "benchmarks" / "systems"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("twostage: error: ")
    return err


def _copy_tiny(dest: Path, extra_qrels: str = "") -> Path:
    shutil.copytree(TINY, dest)
    if extra_qrels:
        with (dest / "qrels" / "test.tsv").open("a") as fh:
            fh.write(extra_qrels)
    return dest


# ----------------------------------------------------------------------------------------- dataset
def test_load_beir_tiny():
    ds = load_beir(TINY, "test")
    assert ds.name == "tiny" and ds.doc_count == 12
    assert [q.query_id for q in ds.queries] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert ds.qrels["q3"] == {"d04": 1}
    assert len(ds.fingerprint) == 64
    assert [q.query_id for q in ds.head(2).queries] == ["q1", "q2"] and set(ds.head(2).qrels) == {"q1", "q2"}
    assert available_splits(TINY) == ["test"]


def test_load_beir_gzip_corpus(tmp_path):
    import gzip

    ds_dir = _copy_tiny(tmp_path / "gz")
    corpus = ds_dir / "corpus.jsonl"
    with gzip.open(ds_dir / "corpus.jsonl.gz", "wb") as fh:
        fh.write(corpus.read_bytes())
    corpus.unlink()
    assert load_beir(ds_dir).doc_count == 12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: (d / "qrels" / "test.tsv").open("a").write("q99\td01\t1\n"),
            r"1 query id\(s\) not in queries.jsonl: 'q99'",
        ),
        (
            lambda d: (d / "qrels" / "test.tsv").open("a").write("q1\tnope\t1\n"),
            r"1 document id\(s\) not in corpus.jsonl",
        ),
        (lambda d: (d / "qrels" / "test.tsv").open("a").write("q1\td02\n"), r"test.tsv:8: expected 3 tab-separated"),
        (lambda d: (d / "qrels" / "test.tsv").open("a").write("q1\td02\thigh\n"), r"test.tsv:8: relevance 'high'"),
        (
            lambda d: (d / "queries.jsonl").open("a").write('{"_id": "q1", "text": "again"}\n'),
            "duplicate query id 'q1'",
        ),
        (lambda d: (d / "corpus.jsonl").open("a").write("{not json\n"), r"corpus.jsonl:13: not valid JSON"),
        (lambda d: (d / "queries.jsonl").unlink(), "no queries.jsonl or queries.jsonl.gz"),
        (
            lambda d: (d / "qrels" / "test.tsv").rename(d / "qrels" / "dev.tsv"),
            r"no qrels/test.tsv \(splits here: dev\)",
        ),
    ],
)
def test_load_beir_errors(tmp_path, change, message):
    ds_dir = _copy_tiny(tmp_path / "bad")
    change(ds_dir)
    with pytest.raises(InputError, match=message):
        load_beir(ds_dir, "test")


def test_load_beir_missing_directory(tmp_path):
    with pytest.raises(InputError, match="dataset directory not found"):
        load_beir(tmp_path / "nope")


# ----------------------------------------------------------------------------------------- configs
def test_example_configs_are_valid():
    systems = load_systems(sorted(SYSTEMS.glob("*.yaml")))
    by_name = {s.name: s for s in systems}
    assert by_name["BM25"].first_stage.backend == "lucene-bm25" and by_name["BM25"].first_stage.encoder_name is None
    assert by_name["SPLADE"].first_stage.encoder_name == "splade"
    ce = by_name["SPLADE + CE@20"]
    assert (ce.reranker.name, ce.depth, ce.effective_rerank_depth) == ("onnx-cross-encoder", 1000, 20)
    assert by_name["SPLADE"].effective_rerank_depth == 0  # identity: no second stage
    dl = by_name["DL19 BM25 run + onnx-cross-encoder"]
    assert dl.first_stage.run is not None and dl.first_stage.run.name == "bm25.top100.trec"
    assert by_name["BM25@100"].depth == 100


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed\n", r"bad.yaml:\d+:\d+: not valid YAML"),
        ("", "empty system config"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("name: X\ncolour: red\n", r"unknown key 'colour' \(allowed here: name, first_stage, reranker"),
        (
            "name: X\nfirst_stage: {backend: lucene-impact, idx: a}\n",
            r"unknown key 'first_stage.idx' \(allowed here: backend, index",
        ),
        ("name: X\nreranker: {name: nope}\n", r"reranker.name: unknown reranker 'nope' \(known: .*identity"),
        ("name: X\nfirst_stage: {backend: elastic}\n", r"unknown index backend 'elastic'"),
        ("name: X\nfirst_stage: {backend: lucene-bm25, encoder: splade}\n", "takes no encoder"),
        ("name: X\ndepth: 10\nrerank_depth: 20\n", r"rerank_depth \(20\) is larger than depth \(10\)"),
        ("name: X\ndepth: zero\n", "depth: Input should be a valid integer"),
        ("first_stage: {}\n", "missing key 'name'"),
    ],
)
def test_config_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_system(path)
    assert "\n" not in str(info.value)


def test_duplicate_system_names(tmp_path):
    for i in (1, 2):
        (tmp_path / f"s{i}.yaml").write_text("name: same\n")
    with pytest.raises(InputError, match="'same' is already used"):
        load_systems([tmp_path / "s1.yaml", tmp_path / "s2.yaml"])
    assert parse_system({"name": " padded "}).name == "padded"


# ------------------------------------------------------------------------------------ evaluation
def test_evaluate_against_hand_computation():
    qrels = {"a": {"d1": 1, "d2": 2}, "b": {"d9": 1}, "c": {"d5": 1}}
    # d1 and d2 tie; the served order (doc_id ascending) counts, not trec_eval's tie order (descending).
    rankings = {"a": [("d0", 3.0), ("d1", 2.0), ("d2", 2.0)], "b": [("d9", 0.5)]}
    values = evaluate(qrels, ["a", "b", "c"], rankings, ["nDCG@10", "RR@10", "R@100"])
    dcg = 1 / math.log2(3) + 2 / math.log2(4)  # gains 0, 1, 2 at ranks 1-3 (gain = relevance, as trec_eval)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert values["nDCG@10"] == pytest.approx([dcg / idcg, 1.0, 0.0])  # c: no ranking → 0
    assert values["RR@10"] == pytest.approx([1 / 2, 1.0, 0.0])
    assert values["R@100"] == pytest.approx([1.0, 1.0, 0.0])
    assert paired_ttest([1.0, 0.5, 0.2], [1.0, 0.5, 0.2]) == 1.0
    assert paired_ttest([1.0], [0.0]) is None
    assert 0.0 < paired_ttest([1.0, 0.9, 0.8, 0.7], [0.5, 0.6, 0.2, 0.7]) < 0.1


# -------------------------------------------------------------------------------------- the runner
@pytest.fixture(scope="module")
def bench_dataset(tmp_path_factory):
    # The tiny fixture plus extra (graded) judgements so that measures are not all 1.0.
    extra = "q1\td02\t2\nq2\td12\t1\nq6\td02\t1\nq5\td06\t1\n"
    return _copy_tiny(tmp_path_factory.mktemp("bench") / "tinyx", extra)


@pytest.fixture(scope="module")
def bench_report(bench_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-out")
    settings = BenchSettings(
        dataset=bench_dataset,
        systems=(SYSTEMS / "bm25.yaml", SYSTEMS / "splade.yaml"),
        out=root / "out",
        index_cache=root / "cache",
        reuse_dir=None,
        warmup=1,
        progress=False,
    )
    return run_benchmark(settings), settings


def _read_run(path: Path) -> dict[str, list[str]]:
    run: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        qid, q0, doc_id, rank, _score, tag = line.split()
        assert q0 == "Q0" and tag
        run.setdefault(qid, []).append(doc_id)
        assert int(rank) == len(run[qid])
    return run


def test_one_row_per_system_with_all_columns(bench_report):
    report, _ = bench_report
    assert [r.name for r in report.rows] == ["BM25", "SPLADE"]
    assert report.baseline == "BM25"
    for row in report.rows:
        assert set(row.quality) == {"nDCG@10", "R@100", "R@1000", "RR@10"}
        assert row.queries == 6
        assert row.latency_ms["total"]["mean"] > 0 and row.latency_ms["total"]["p95"] >= 0
        assert row.latency_ms["retrieve"]["mean"] > 0
        assert row.docs_reranked == 0 and row.usd_per_query == 0  # identity: no second stage
    assert report.row("SPLADE").first_stage == "lucene-impact (splade, bundled:splade-tiny)"
    assert "(built)" in report.row("BM25").index


def test_measures_match_hand_computation_from_run_files(bench_report, bench_dataset):
    report, _ = bench_report
    qrels = load_beir(bench_dataset).qrels
    for row in report.rows:
        run = _read_run(Path(row.run_file))
        ndcg, rr, r100 = [], [], []
        for qid, rels in qrels.items():
            docs = run.get(qid, [])
            dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(docs[:10]))
            ideal = sorted(rels.values(), reverse=True)
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:10]))
            ndcg.append(dcg / idcg)
            rr.append(next((1 / (i + 1) for i, d in enumerate(docs[:10]) if rels.get(d, 0) > 0), 0.0))
            r100.append(sum(1 for d in docs[:100] if rels.get(d, 0) > 0) / sum(1 for g in rels.values() if g > 0))
        assert row.quality["nDCG@10"] == pytest.approx(sum(ndcg) / len(ndcg), abs=1e-4)
        assert row.quality["RR@10"] == pytest.approx(sum(rr) / len(rr), abs=1e-4)
        assert row.quality["R@100"] == pytest.approx(sum(r100) / len(r100), abs=1e-4)
    assert report.row("BM25").quality["nDCG@10"] < 1.0  # the extra judgements make it non-trivial


def test_significance_against_the_baseline(bench_report):
    report, _ = bench_report
    assert report.row("BM25").p_value == {}
    splade = report.row("SPLADE")
    measures = ("nDCG@10", "R@100", "R@1000", "RR@10")
    assert set(splade.p_value) == set(measures)
    exact = {}
    for measure in measures:  # exact two-sided sign-flip test: all 2^n sign patterns of the differences
        d = [a - b for a, b in zip(report.per_query["SPLADE"][measure], report.per_query["BM25"][measure], strict=True)]
        observed = abs(sum(d))
        flips = [abs(sum(x * (1 if (mask >> i) & 1 else -1) for i, x in enumerate(d))) for mask in range(2 ** len(d))]
        exact[measure] = 1.0 if observed < 1e-12 else sum(f >= observed - 1e-12 for f in flips) / len(flips)
        assert splade.p_value[measure] == pytest.approx(exact[measure], abs=0.02)  # 10,000 random flips
        delta = splade.quality[measure] - report.row("BM25").quality[measure]
        assert splade.delta[measure] == pytest.approx(delta, abs=2e-4)
        lo, hi = splade.ci95[measure]
        assert (
            min(d) - 1e-9 <= lo <= splade.delta[measure] + 1e-4 and splade.delta[measure] - 1e-4 <= hi <= max(d) + 1e-9
        )
    # Holm across the row's four cells: the i-th smallest p times (4 - i), made monotone, capped at 1.
    order = sorted(measures, key=lambda m: splade.p_value[m])
    running = 0.0
    for i, m in enumerate(order):
        running = max(running, min(1.0, (4 - i) * splade.p_value[m]))
        assert splade.p_holm[m] == pytest.approx(running)


def test_holm_and_bootstrap_by_hand():
    assert holm([0.01, None])[1] is None
    adjusted = holm([0.01, 0.04, 0.03])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06])  # 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04)
    lo, hi = bootstrap_ci([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert (lo, hi) == (1.0, 1.0)  # every resample has the same mean difference
    assert randomisation_test([0.5, 0.5], [0.5, 0.5]) == 1.0


def test_files_written(bench_report):
    _, settings = bench_report
    out = settings.out
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["BM25.run", "SPLADE.run"]
    payload = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in payload["systems"]] == ["BM25", "SPLADE"]
    assert payload["dataset"]["queries"] == 6 and payload["per_query"]["query_ids"][0] == "q1"
    assert len(payload["per_query"]["SPLADE"]["nDCG@10"]) == 6
    md = (out / "report.md").read_text()
    assert "| BM25 | " in md and "| SPLADE | " in md and "p_holm=" in md
    for png in ("cost_quality.png", "ndcg_delta_hist.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "matplotlib.pyplot" not in sys.modules  # drawn on Figure objects: no pyplot state, no backend switch


def test_cli_bench_reuses_cached_indexes(bench_report, bench_dataset, tmp_path, capsys):
    _, settings = bench_report
    out = tmp_path / "cli-out"
    argv = [
        "bench",
        "--dataset",
        str(bench_dataset),
        "--systems",
        str(SYSTEMS / "splade.yaml"),
        str(SYSTEMS / "bm25.yaml"),
    ]
    argv += ["--out", str(out), "--index-cache", str(settings.index_cache), "--max-queries", "3"]
    argv += ["--baseline", "BM25", "--no-progress", "--no-plots", "--warmup", "0"]
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| SPLADE | " in printed and "| BM25 | " in printed
    payload = json.loads((out / "report.json").read_text())
    assert payload["baseline"] == "BM25" and payload["dataset"]["queries"] == 3
    assert all(s["index"].endswith("(cached)") for s in payload["systems"])
    assert not (out / "cost_quality.png").exists()


def test_index_reuse_and_given_index(bench_report, bench_dataset, tmp_path):
    report, _ = bench_report
    built = Path(report.row("SPLADE").index.split(" (")[0])
    reuse = tmp_path / "var"
    shutil.copytree(built, reuse / bench_dataset.name)  # as `make demo` leaves var/scifact
    one = dict(out=tmp_path / "o", index_cache=tmp_path / "empty-cache", warmup=0, progress=False, plots=False)
    run = BenchSettings(dataset=bench_dataset, systems=(SYSTEMS / "splade.yaml",), reuse_dir=reuse, **one)
    first = run_benchmark(run).rows[0]
    assert first.index == f"{reuse / bench_dataset.name} (reused)"
    assert first.quality == report.row("SPLADE").quality
    assert not (tmp_path / "empty-cache").exists()
    # A system that names its index uses it, and one built from another corpus is refused.
    given = tmp_path / "given.yaml"
    given.write_text(f"name: G\nfirst_stage: {{backend: lucene-impact, index: {built}}}\n")
    row = run_benchmark(BenchSettings(dataset=bench_dataset, systems=(given,), reuse_dir=None, **one)).rows[0]
    assert row.index == f"{built} (given)" and row.quality == report.row("SPLADE").quality
    other = _copy_tiny(tmp_path / "other")
    (other / "corpus.jsonl").open("a").write('{"_id": "d99", "title": "", "text": "one more document"}\n')
    with pytest.raises(InputError, match="holds 12 documents, the other corpus 13"):
        run_benchmark(BenchSettings(dataset=other, systems=(given,), reuse_dir=None, **one))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--baseline", "nope"], "--baseline 'nope' is not one of the systems"),
        (["--split", "dev"], r"no qrels/dev.tsv \(splits here: test\)"),
    ],
)
def test_cli_bench_bad_input(extra, message, tmp_path, capsys):
    argv = ["bench", "--dataset", str(TINY), "--systems", str(SYSTEMS / "bm25.yaml"), "--out", str(tmp_path / "o")]
    assert main([*argv, *extra]) == 2
    assert re.search(message, _one_line_error(capsys))
    assert not (tmp_path / "o").exists()


def test_cli_bench_bad_config_and_dataset(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: X\nreranker: {name: nope}\n")
    out = tmp_path / "o"
    assert main(["bench", "--dataset", str(TINY), "--systems", str(bad), "--out", str(out)]) == 2
    assert "unknown reranker 'nope'" in _one_line_error(capsys)
    assert main(["bench", "--dataset", str(tmp_path / "none"), "--systems", str(SYSTEMS / "bm25.yaml")]) == 2
    assert "dataset directory not found" in _one_line_error(capsys)
    assert main(["bench", "--dataset", str(TINY), "--systems", str(tmp_path / "missing.yaml")]) == 2
    assert "system config not found" in _one_line_error(capsys)
    assert not out.exists()


def test_bad_reranker_params_and_build_options(tmp_path):
    (tmp_path / "p.yaml").write_text("name: X\nfirst_stage: {backend: lucene-bm25, options: {k3: 1}}\n")
    settings = BenchSettings(dataset=TINY, systems=(tmp_path / "p.yaml",), out=tmp_path / "o", progress=False)
    with pytest.raises(InputError, match=r"unknown option\(s\) 'k3' for lucene-bm25 \(allowed: k1, b"):
        run_benchmark(settings)
    (tmp_path / "r.yaml").write_text("name: X\nfirst_stage: {backend: lucene-bm25}\nreranker: {params: {x: 1}}\n")
    settings = BenchSettings(
        dataset=TINY, systems=(tmp_path / "r.yaml",), out=tmp_path / "o", index_cache=tmp_path / "c", progress=False
    )
    with pytest.raises(InputError, match=r"system 'X': reranker: got an unexpected keyword argument 'x'"):
        run_benchmark(settings)
    assert not (tmp_path / "c").exists() and not (tmp_path / "o").exists()  # checked before any work


# ------------------------------------------------------------------------------------------- fetch
def _beir_zip(path: Path, name: str) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for f in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
            zf.write(TINY / f, f"{name}/{f}")
        zf.writestr(f"{name}/../../evil.txt", "ignored")
    return path.as_uri()


def test_fetch_from_zip_archive(tmp_path):
    url = _beir_zip(tmp_path / "scifact.zip", "scifact")
    out = fetch_beir("scifact", tmp_path / "data" / "scifact", source="zip", url=url)
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "qrels", "queries.jsonl"]
    assert load_beir(out).doc_count == 12
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()
    with pytest.raises(InputError, match="already exists"):
        fetch_beir("scifact", out, source="zip", url=url)


def test_fetch_errors_offline_and_bad_input(tmp_path, capsys):
    with pytest.raises(InputError, match="unknown BEIR dataset 'nope'"):
        fetch_beir("nope", tmp_path / "x")
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(TwoStageError, match="is not a zip archive"):
        fetch_beir("scifact", tmp_path / "y", source="zip", url=(tmp_path / "bad.zip").as_uri())
    # Nothing listens on port 9 of the loopback: what a machine without network sees, fast.
    argv = [
        "fetch-beir",
        "scifact",
        "--out",
        str(tmp_path / "z"),
        "--source",
        "zip",
        "--url",
        "http://127.0.0.1:9/s.zip",
    ]
    assert main(argv) == 1  # a failed download is a failure at run time, not bad usage
    err = _one_line_error(capsys)
    assert "cannot download http://127.0.0.1:9/s.zip" in err and "needs network access" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]  # no partial directories left


def test_fetch_through_ir_datasets(tmp_path, monkeypatch):
    """The ir_datasets path against a stand-in module with ir_datasets' interface (no download)."""
    from twostage_search.engine.beir import read_corpus, read_qrels, read_queries

    docs = list(read_corpus(TINY / "corpus.jsonl"))
    queries = list(read_queries(TINY / "queries.jsonl"))
    qrels = read_qrels(TINY / "qrels" / "test.tsv")
    ns = types.SimpleNamespace

    class Dataset:
        def __init__(self, with_docs: bool, with_qrels: bool) -> None:
            self.with_docs, self.with_qrels = with_docs, with_qrels

        def docs_iter(self):
            return (ns(doc_id=d.doc_id, title=d.title, text=d.text) for d in docs)

        def has_queries(self):
            return True

        def queries_iter(self):
            return (ns(query_id=q.query_id, text=q.text) for q in queries)

        def has_qrels(self):
            return self.with_qrels

        def qrels_iter(self):
            return (ns(query_id=q, doc_id=d, relevance=r) for q, ds in qrels.items() for d, r in ds.items())

    def load(name: str):
        table = {"beir/scifact": Dataset(True, False), "beir/scifact/test": Dataset(False, True)}
        if name not in table:
            raise KeyError(name)
        return table[name]

    monkeypatch.setitem(sys.modules, "ir_datasets", types.SimpleNamespace(load=load))
    out = fetch_beir("scifact", tmp_path / "sf")  # source auto → ir_datasets when importable
    ds = load_beir(out)
    assert ds.doc_count == 12 and len(ds.queries) == 6 and available_splits(out) == ["test"]
