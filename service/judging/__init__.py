"""Relevance judgements from three sources in one store: people (the judging page), the LORE LLM judge
run over logged pairs, and clicks (COEC over the UBI log); exported as TREC qrels and Quepid CSV, with
the agreement between sources.

Nothing here imports FastAPI: the store, the exports and ``twostage judge`` work without the service.
"""
