"""Hugging Face transformers: a causal LM (HF directory, hub name or de-quantised GGUF) on a CPU or GPU."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from twostage_search.engine.optional import require, torch_with_threads
from twostage_search.rerankers.llm.backends.base import (
    Completion,
    Pricing,
    Prompt,
    apply_stop,
    check_args,
    render_plain,
)


class TransformersBackend:
    """A causal LM through Hugging Face transformers (CPU or GPU): greedy ``model.generate`` with top log-probs.

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

        torch = torch_with_threads(threads, "llm")
        transformers = require("transformers", "llm")
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
        self._pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else min(self._eos, default=0)
        # Greedy decoding and nothing else: the checkpoint's own generation defaults (sampling, a repetition
        # penalty) would change which token is chosen.
        self._model.generation_config = transformers.GenerationConfig()
        self._transformers = transformers

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
        n_in = int(ids.shape[1])
        config = self._transformers.GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=sorted(self._eos),
            pad_token_id=self._pad,
            stop_strings=list(stop) if stop else None,
            output_logits=bool(logprobs),
            return_dict_in_generate=True,
        )
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            out = self._model.generate(
                ids, attention_mask=torch.ones_like(ids), generation_config=config, tokenizer=self._tok
            )
        out_ids = [int(t) for t in out.sequences[0, n_in:]]
        finish = "length"
        if out_ids and out_ids[-1] in self._eos:  # end of answer: not part of the answer
            out_ids.pop()
            finish = "stop"
        tops: list[dict[str, float]] = []
        if logprobs:  # an end-of-answer step keeps its alternatives (a last entry without a token)
            for step in out.logits:
                values, indices = torch.log_softmax(step[0].float(), dim=-1).topk(logprobs)
                tops.append({self._tok.decode([int(i)]): float(v) for v, i in zip(values, indices, strict=True)})
        text, stopped = apply_stop(str(self._tok.decode(out_ids)), stop)
        if stopped:
            finish = "stop"
        return Completion(
            text=text,
            tokens_in=n_in,
            tokens_out=len(out_ids),
            tokens=tuple(self._tok.decode([i]) for i in out_ids) if logprobs else (),
            top_logprobs=tuple(tops),
            finish_reason=finish,
            wall_ms=(time.perf_counter() - started) * 1000,
            usd=self.pricing.cost(n_in, len(out_ids)),
        )
