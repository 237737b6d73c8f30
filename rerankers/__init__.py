"""Second-stage rerankers, each registered by entry point (``twostage_search.rerankers`` group).

Importing this package loads no model and no backend module: ``registry.rerankers.get(name)`` imports
the one module that defines ``name``.
"""
