"""twostage: a SPLADE first stage and a pluggable reranker, composed explicitly.

>>> import indexes
>>> from engine import TwoStage
>>> from rerankers.identity import IdentityReranker
>>> index = indexes.load("var/scifact")                      # doctest: +SKIP
>>> TwoStage(index.retriever(), IdentityReranker()).search("what causes tides", k=10)  # doctest: +SKIP
"""

from twostage_search.engine.errors import InputError, MissingDependencyError, TwoStageError, UnknownBackendError
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.protocols import Encoder, Reranker, Retriever
from twostage_search.engine.types import Candidate, Document, Query, RankedList, ScoredDoc, SparseVector

__version__ = "0.1.0"

__all__ = [
    "Candidate",
    "Document",
    "Encoder",
    "InputError",
    "MissingDependencyError",
    "Query",
    "RankedList",
    "Reranker",
    "Retriever",
    "ScoredDoc",
    "SparseVector",
    "TwoStage",
    "TwoStageError",
    "UnknownBackendError",
    "__version__",
]
