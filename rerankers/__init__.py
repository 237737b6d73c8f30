"""Second-stage rerankers. Each module registers its backends in :data:`engine.registry.rerankers`."""

from rerankers import (  # noqa: F401  (registration)
    cascade,  # "cascade"
    cross_encoder,  # "cross-encoder"
    identity,  # "identity"
    llm,  # "listwise-llm", "lore" (rerankers/llm/)
)
