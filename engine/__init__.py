"""twostage: a SPLADE first stage and a pluggable reranker, composed explicitly.

>>> from twostage_search import indexes
>>> from twostage_search.engine import TwoStage
>>> from twostage_search.rerankers.identity import IdentityReranker
>>> index = indexes.load("var/scifact")                      # doctest: +SKIP
>>> TwoStage(index.retriever(), IdentityReranker()).search("what causes tides", k=10)  # doctest: +SKIP
"""

from importlib.metadata import version

from twostage_search.engine.errors import InputError, MissingDependencyError, TwoStageError, UnknownBackendError
from twostage_search.engine.pipeline import TwoStage
from twostage_search.engine.protocols import Encoder, Reranker, Retriever
from twostage_search.engine.types import Candidate, Document, Query, RankedList, ScoredDoc, SparseVector

__version__ = version("twostage-search")  # pyproject.toml's version, the one place it is set

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
