"""Published figures on BEIR datasets, to set our measurements beside (same split, same qrels).

Each entry names its source. The SPLADE models below are BERT-base sized (about 110M parameters);
twostage's offline default, ``bundled:splade-tiny``, is a 4.4M-parameter SPLADE-tiny (2 layers, hidden
128), so lower numbers from it are expected and say nothing about SPLADE-v3 itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ANSERINI = "Anserini regression docs (castorini/anserini, docs/regressions/regressions-beir-v1.0.0-{}.md)"


@dataclass(frozen=True)
class Published:
    system: str
    model: str
    ndcg10: float
    recall100: float | None
    recall1000: float | None
    source: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


PUBLISHED: dict[str, tuple[Published, ...]] = {
    "scifact": (
        Published(
            "BM25 (BEIR paper)",
            "Elasticsearch BM25, title and text as fields",
            0.665,
            None,
            None,
            "Thakur et al., BEIR, NeurIPS 2021 Datasets and Benchmarks (nDCG@10 results table)",
        ),
        Published(
            "BM25 flat (Anserini)",
            "Lucene BM25 k1=0.9 b=0.4, title + text in one field (what lucene-bm25 does)",
            0.6789,
            0.9253,
            0.9767,
            ANSERINI.format("scifact.flat"),
        ),
        Published(
            "BM25 multifield (Anserini)",
            "Lucene BM25 k1=0.9 b=0.4, title and text as separate fields",
            0.6647,
            0.9076,
            0.9800,
            ANSERINI.format("scifact.multifield"),
        ),
        Published(
            "SPLADE++ EnsembleDistil",
            "naver/splade-cocondenser-ensembledistil (BERT-base, ~110M parameters)",
            0.7036,
            0.9353,
            0.9867,
            ANSERINI.format("scifact.splade-pp-ed.onnx"),
        ),
        Published(
            "SPLADE-v3",
            "naver/splade-v3 (BERT-base, ~110M parameters)",
            0.7140,
            0.9360,
            0.9967,
            ANSERINI.format("scifact.splade-v3.onnx"),
        ),
    ),
}

MODEL_NOTE = (
    "Published SPLADE figures use BERT-base models (about 110M parameters). Our default first stage, "
    "`bundled:splade-tiny`, is SPLADE-tiny: 4.4M parameters (2 layers, hidden 128), about 1/25 of that, "
    "chosen because it is what installs offline here — so it is expected to score below SPLADE++/SPLADE-v3."
)


def published_for(dataset: str) -> tuple[Published, ...]:
    """Published figures for a dataset name (the BEIR directory name, e.g. ``scifact``); () if none."""
    return PUBLISHED.get(dataset.lower(), ())
