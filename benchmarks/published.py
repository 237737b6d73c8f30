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


# ------------------------------------------------------------------------------ TREC DL reranking
ANSERINI_DL = "Anserini regression docs (castorini/anserini, docs/regressions/regressions-{}.md)"
CE_CARD = (
    "cross-encoder/ms-marco-MiniLM-L-12-v2 model card, 'NDCG@10 (TREC DL 19)' column (huggingface.co and "
    "SBERT.net 'MS MARCO Cross-Encoders'); the card does not state the first stage or depth"
)
RANKGPT = "Sun et al., 'Is ChatGPT Good at Search?', EMNLP 2023 (arXiv:2304.09542), TREC results table"


@dataclass(frozen=True)
class PublishedRerank:
    """A published nDCG@10 on a TREC DL passage set: a first stage, optionally reranked.

    ``checked`` says whether the figure was checked here against its source (or reproduced exactly by
    evaluating the same run); unchecked figures are transcriptions of a paper's table.
    """

    dataset: str  # dataset directory name, e.g. trec-dl-2019-passage
    first_stage: str  # run name in the dataset's runs/ folder, e.g. bm25
    reranker: str  # "" for the first stage alone, else a key of trec_dl.RERANKERS or a free label
    system: str
    ndcg10: float
    depth: int | None
    source: str
    checked: bool = True


_DL19, _DL20 = "trec-dl-2019-passage", "trec-dl-2020-passage"

PUBLISHED_DL: tuple[PublishedRerank, ...] = (
    PublishedRerank(_DL19, "bm25", "", "BM25 (k1=0.9, b=0.4)", 0.5058, None, ANSERINI_DL.format("dl19-passage")),
    PublishedRerank(_DL20, "bm25", "", "BM25 (k1=0.9, b=0.4)", 0.4796, None, ANSERINI_DL.format("dl20-passage")),
    PublishedRerank(
        _DL19, "splade-pp-ed", "", "SPLADE++ ED", 0.7308, None, ANSERINI_DL.format("dl19-passage.splade-pp-ed")
    ),
    PublishedRerank(
        _DL20, "splade-pp-ed", "", "SPLADE++ ED", 0.7197, None, ANSERINI_DL.format("dl20-passage.splade-pp-ed")
    ),
    PublishedRerank(_DL19, "bm25", "onnx-cross-encoder", "ms-marco-MiniLM-L-12-v2 (fp32)", 0.7431, None, CE_CARD),
    PublishedRerank(_DL19, "bm25", "", "BM25 → gpt-3.5-turbo listwise (RankGPT)", 0.6580, 100, RANKGPT, False),
    PublishedRerank(_DL20, "bm25", "", "BM25 → gpt-3.5-turbo listwise (RankGPT)", 0.6291, 100, RANKGPT, False),
    PublishedRerank(_DL19, "bm25", "", "BM25 → gpt-4 listwise (RankGPT)", 0.7559, 100, RANKGPT, False),
    PublishedRerank(_DL20, "bm25", "", "BM25 → gpt-4 listwise (RankGPT)", 0.7056, 100, RANKGPT, False),
    PublishedRerank(_DL19, "bm25", "", "BM25 → monoT5-3B (as reported by RankGPT)", 0.7183, 100, RANKGPT, False),
    PublishedRerank(_DL20, "bm25", "", "BM25 → monoT5-3B (as reported by RankGPT)", 0.6889, 100, RANKGPT, False),
)


def published_dl(dataset: str, first_stage: str, reranker: str = "") -> tuple[PublishedRerank, ...]:
    """Published DL figures for a dataset, first-stage run and reranker key ("" = the run alone)."""
    return tuple(
        p for p in PUBLISHED_DL if p.dataset == dataset and p.first_stage == first_stage and p.reranker == reranker
    )
