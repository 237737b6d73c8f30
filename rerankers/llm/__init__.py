"""LLM rerankers (listwise RankGPT-style, LORE graded judgements) and the LLM backends they run on.

Importing this package registers the backends (``llama-cpp``, ``transformers``, ``vllm``, ``openai``)
in :data:`rerankers.llm.backends.llm_backends` and the rerankers ``listwise-llm`` and ``lore`` in
:data:`engine.registry.rerankers`. No model is loaded until a reranker or backend is used.
"""

from rerankers.llm import backends, listwise, lore, openai_http  # noqa: F401  (registration)
