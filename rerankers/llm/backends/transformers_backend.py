"""Hugging Face transformers: a causal LM (HF directory, hub name or de-quantised GGUF) on a CPU or GPU."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from twostage_search.engine.optional import require
from twostage_search.rerankers.llm.backends.base import (
    Completion,
    Pricing,
    Prompt,
    apply_stop,
    check_args,
    render_plain,
)


class TransformersBackend:
    """A causal LM through Hugging Face transformers (CPU or GPU), greedy decoding with top log-probs.

    ``model`` is a local directory or hub name (``Qwen/Qwen2.5-0.5B-Instruct``), a ``.gguf`` file or
    ``bundled:NAME``; GGUF models are de-quantised once into a cached HF directory
    (:func:`rerankers.llm.gguf.resolve_hf`). ``gguf_file`` loads a GGUF file inside ``model`` directly.
    Slower than llama.cpp on a CPU, but the same runtime as most fine-tuning code.
    """

    name = "transformers"

    def __init__(
        self,
        model: str | None = None,
        *,
        gguf_file: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        from twostage_search.rerankers.llm.gguf import DEFAULT_LLM, resolve_hf

        torch = require("torch", "llm")
        transformers = require("transformers", "llm")
        if threads is not None:
            torch.set_num_threads(threads)
        spec = model or DEFAULT_LLM
        self.model = spec
        self.pricing = pricing or Pricing()
        self._torch = torch
        self._device = device
        self._lock = threading.Lock()
        # A GGUF model (bundled or a file) is converted once to a cached HF directory (see resolve_hf).
        source = resolve_hf(spec) if spec.startswith("bundled:") or spec.endswith(".gguf") else spec
        kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
        self._tok = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
        self._model = transformers.AutoModelForCausalLM.from_pretrained(
            source, dtype=getattr(torch, dtype), **kwargs
        ).to(device)
        self._model.eval()
        eos = self._model.generation_config.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tok.eos_token_id is not None:
            self._eos.add(self._tok.eos_token_id)

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if not getattr(self._tok, "chat_template", None):
            return render_plain(prompt)
        messages = [{"role": r, "content": c} for r, c in prompt.messages]
        text = self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(text) + prompt.prefix

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self._tok(text, add_special_tokens=False)["input_ids"]
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
        check_args(max_tokens, temperature, logprobs, greedy_only="transformers")
        return [self._generate_one(p, max_tokens, logprobs, stop) for p in prompts]

    def _generate_one(
        self, prompt: Prompt, max_tokens: int, logprobs: int | None, stop: Sequence[str] | None
    ) -> Completion:
        torch = self._torch
        ids = self._tok(self.render(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"].to(
            self._device
        )
        started = time.perf_counter()
        out_ids: list[int] = []
        tokens: list[str] = []
        tops: list[dict[str, float]] = []
        finish = "length"
        with self._lock, torch.inference_mode():
            past = None
            step_input = ids
            for _ in range(max_tokens):
                out = self._model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()
                best = int(logits.argmax())
                if logprobs:  # an end-of-answer step keeps its alternatives (a last entry without a token)
                    lp = torch.log_softmax(logits, dim=-1)
                    values, indices = lp.topk(logprobs)
                    tops.append({self._tok.decode([int(i)]): float(v) for v, i in zip(values, indices, strict=True)})
                if best in self._eos:
                    finish = "stop"
                    break
                if logprobs:
                    tokens.append(self._tok.decode([best]))
                out_ids.append(best)
                if stop and apply_stop(self._tok.decode(out_ids), stop)[1]:
                    finish = "stop"
                    break
                step_input = torch.tensor([[best]], device=self._device)
        text, _ = apply_stop(str(self._tok.decode(out_ids)), stop)
        n_in = int(ids.shape[1])
        return Completion(
            text=text,
            tokens_in=n_in,
            tokens_out=len(out_ids),
            tokens=tuple(tokens),
            top_logprobs=tuple(tops),
            finish_reason=finish,
            wall_ms=(time.perf_counter() - started) * 1000,
            usd=self.pricing.cost(n_in, len(out_ids)),
        )
