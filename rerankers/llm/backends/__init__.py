"""LLM runtimes behind one small interface (:mod:`.base`), one module per runtime: llama.cpp
(:mod:`.llama_cpp_backend`), Hugging Face transformers (:mod:`.transformers_backend`), in-process vLLM
(:mod:`.vllm_backend`) and any OpenAI-compatible HTTP server (:mod:`.openai_http`).

Each runtime is registered by entry point in the ``twostage_search.llm_backends`` group; importing this
package imports none of them (and no heavy dependency).
"""

from twostage_search.rerankers.llm.backends.base import (
    ChatPrompt,
    Completion,
    LazyBackend,
    LLMBackend,
    Pricing,
    Prompt,
    apply_stop,
    create_backend,
    llm_backends,
    log_softmax_top,
    render_plain,
)

__all__ = [
    "ChatPrompt",
    "Completion",
    "LLMBackend",
    "LazyBackend",
    "Pricing",
    "Prompt",
    "apply_stop",
    "create_backend",
    "llm_backends",
    "log_softmax_top",
    "render_plain",
]
