"""twostage: a SPLADE first stage and a pluggable reranker, composed explicitly.

>>> import indexes
>>> from engine import TwoStage
>>> from rerankers.identity import IdentityReranker
>>> index = indexes.load("var/scifact")                      # doctest: +SKIP
>>> TwoStage(index.retriever(), IdentityReranker()).search("what causes tides", k=10)  # doctest: +SKIP
"""

from engine.errors import InputError, MissingDependencyError, TwoStageError, UnknownBackendError
from engine.pipeline import TwoStage
from engine.protocols import Encoder, Reranker, Retriever
from engine.types import Candidate, Document, Query, RankedList, ScoredDoc, SparseVector

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
