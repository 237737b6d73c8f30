"""Second-stage rerankers. Each module registers its backends in :data:`engine.registry.rerankers`."""

from rerankers import identity  # noqa: F401  (registers "identity")
