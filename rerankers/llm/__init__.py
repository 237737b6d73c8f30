"""LLM rerankers (listwise RankGPT-style, LORE graded judgements) and the LLM runtimes they run on.

The rerankers ``listwise-llm`` and ``lore`` are registered by entry point in the
``twostage_search.rerankers`` group and the runtimes (``llama-cpp``, ``transformers``, ``vllm``,
``openai``) in ``twostage_search.llm_backends``. No model is loaded until one is used.
"""
