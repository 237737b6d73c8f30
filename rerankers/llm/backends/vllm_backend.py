"""vLLM in-process (``vllm.LLM``) on a GPU host."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from twostage_search.engine.optional import require
from twostage_search.rerankers.llm.backends.base import (
    Completion,
    Pricing,
    Prompt,
    check_args,
    render_plain,
)


class VLLMBackend:
    """In-process vLLM (``vllm.LLM``) on a GPU host: all prompts of a call go to ``LLM.generate`` as one
    batch (continuous batching, prefix caching). ``engine_options`` go to ``vllm.LLM`` unchanged
    (``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ``quantization``...).

    Install with ``pip install 'twostage-search[vllm]'``. For a separate vLLM server use the ``openai`` backend
    against its ``/v1`` endpoint instead.
    """

    name = "vllm"

    def __init__(
        self, model: str = "Qwen/Qwen2.5-7B-Instruct", *, pricing: Pricing | None = None, **engine_options: Any
    ) -> None:
        vllm = require("vllm", "vllm")
        self.model = model
        self.pricing = pricing or Pricing()
        self._vllm = vllm
        engine_options.setdefault("enable_prefix_caching", True)
        self._llm = vllm.LLM(model=model, **engine_options)
        self._tok = self._llm.get_tokenizer()

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not getattr(self._tok, "chat_template", None):
            return render_plain(prompt)
        messages = [{"role": r, "content": c} for r, c in prompt.messages]
        return str(self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)) + prompt.prefix

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self._tok.encode(text, add_special_tokens=False)
        return text if len(ids) <= max_tokens else str(self._tok.decode(ids[:max_tokens]))

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[Completion]:
        check_args(max_tokens, temperature, logprobs)
        if not prompts:
            return []
        params = self._vllm.SamplingParams(
            temperature=temperature, max_tokens=max_tokens, logprobs=logprobs, stop=list(stop) if stop else None
        )
        started = time.perf_counter()
        outputs = self._llm.generate([self.render(p) for p in prompts], params, use_tqdm=False)
        wall = (time.perf_counter() - started) * 1000
        results = []
        for request in outputs:
            out = request.outputs[0]
            n_in, n_out = len(request.prompt_token_ids or ()), len(out.token_ids)
            tokens: list[str] = []
            tops: list[dict[str, float]] = []
            for token_id, alternatives in zip(out.token_ids, out.logprobs or (), strict=False):
                tops.append({_vllm_token(self._tok, i, lp): lp.logprob for i, lp in alternatives.items()})
                tokens.append(_vllm_token(self._tok, token_id, alternatives.get(token_id)))
            results.append(
                Completion(
                    text=out.text,
                    tokens_in=n_in,
                    tokens_out=n_out,
                    tokens=tuple(tokens),
                    top_logprobs=tuple(tops),
                    finish_reason=str(out.finish_reason or "stop"),
                    wall_ms=wall,
                    usd=self.pricing.cost(n_in, n_out),
                )
            )
        return results


def _vllm_token(tokenizer: Any, token_id: int, logprob: Any) -> str:
    decoded = getattr(logprob, "decoded_token", None)
    return str(decoded) if decoded is not None else str(tokenizer.decode([token_id]))
