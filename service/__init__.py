"""The HTTP service: ``create_app(settings)`` serves search and rerank with A/B experiments over rerankers."""
