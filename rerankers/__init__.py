"""Second-stage rerankers. Each module registers its backends in :data:`engine.registry.rerankers`."""

from rerankers import cross_encoder, identity  # noqa: F401  (register "cross-encoder", "identity")
