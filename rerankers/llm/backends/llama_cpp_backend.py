"""llama.cpp in-process (llama-cpp-python): GGUF models on a CPU or a GPU."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.rerankers.llm.backends.base import (
    Completion,
    Pricing,
    Prompt,
    apply_stop,
    check_args,
    log_softmax_top,
    render_plain,
)


class LlamaCppBackend:
    """A GGUF model in-process through llama-cpp-python (CPU here; ``n_gpu_layers=-1`` offloads to a GPU).

    Decoding is our own greedy loop over ``Llama.eval`` so that every generated token's top
    log-probabilities are available without ``logits_all`` (which would keep vocabulary × context
    logits). The prefix shared with the previous prompt is kept in the KV cache (in aligned blocks of
    ``block`` tokens, so results never depend on what was evaluated before), so prompts that share
    instructions and the query (as a reranker's per-document prompts do) pay for them once.
    Calls are serialised by a lock (a llama.cpp context is not thread-safe).

    Args:
        model: ``bundled:NAME`` (see :mod:`rerankers.llm.gguf`; default: the bundled Qwen2.5-Coder-0.5B-Instruct)
            or a path to a ``.gguf`` file.
        n_ctx: context window in tokens.
        threads: CPU threads (default: llama.cpp's choice).
        n_gpu_layers: layers to offload to a GPU build of llama.cpp.
        block: prompt evaluation batch and KV-cache reuse granularity, in tokens.
        chat_template: ``"auto"`` (the GGUF's own template, else a plain rendering) or ``"plain"``.
        pricing: money per token (0 for a local model unless you price the hardware).
    """

    name = "llama-cpp"

    def __init__(
        self,
        model: str | None = None,
        *,
        n_ctx: int = 4096,
        threads: int | None = None,
        n_gpu_layers: int = 0,
        seed: int = 0,
        block: int = 32,
        chat_template: str = "auto",
        pricing: Pricing | None = None,
    ) -> None:
        from twostage_search.rerankers.llm.gguf import DEFAULT_LLM, resolve_gguf

        llama_cpp = require("llama_cpp", "llm")
        chat_format = require("llama_cpp.llama_chat_format", "llm")
        spec = model or DEFAULT_LLM
        if block < 1:
            raise InputError("block must be at least 1")
        self.model = spec
        self.block = block
        self.pricing = pricing or Pricing()
        self._lock = threading.Lock()
        self._llm = llama_cpp.Llama(
            model_path=resolve_gguf(spec),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=n_gpu_layers,
            seed=seed,
            logits_all=False,
            verbose=False,
        )
        self._eos = {self._llm.token_eos()}
        template = self._llm.metadata.get("tokenizer.chat_template") if chat_template == "auto" else None
        bos = self._detok([self._llm.token_bos()]) if self._llm.token_bos() >= 0 else ""
        # The GGUF's own template, rendered as llama-cpp-python's chat handlers render it.
        self._formatter = (
            chat_format.Jinja2ChatFormatter(
                template, eos_token=self._detok([self._llm.token_eos()]), bos_token=bos, add_generation_prompt=True
            )
            if template
            else None
        )
        for stop_name in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
            ids = self._llm.tokenize(stop_name.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self._eos.add(ids[0])

    def _detok(self, ids: Sequence[int]) -> str:
        return str(self._llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace"))

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if self._formatter is None:
            return render_plain(prompt)
        messages = [{"role": r, "content": c} for r, c in prompt.messages]
        try:
            rendered = self._formatter(messages=messages)
        except ValueError as exc:  # the template's raise_exception(...)
            raise InputError(f"chat template: {exc}") from exc
        return str(rendered.prompt) + prompt.prefix

    def tokenize(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def truncate(self, text: str, max_tokens: int) -> str:
        ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(ids) <= max_tokens:
            return text
        return str(self._llm.detokenize(ids[:max_tokens]).decode("utf-8", errors="ignore"))

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[Completion]:
        check_args(max_tokens, temperature, logprobs, greedy_only="llama-cpp")
        return [self._generate_one(p, max_tokens, logprobs, stop) for p in prompts]

    def _generate_one(
        self, prompt: Prompt, max_tokens: int, logprobs: int | None, stop: Sequence[str] | None
    ) -> Completion:
        import numpy as np

        text_prompt = self.render(prompt)
        ids = self.tokenize(text_prompt)
        if not ids:
            ids = [self._llm.token_bos()]
        if len(ids) + max_tokens > self._llm.n_ctx():
            raise InputError(
                f"prompt of {len(ids)} tokens + {max_tokens} new exceeds the context of {self._llm.n_ctx()}"
            )
        started = time.perf_counter()
        with self._lock:
            llm = self._llm
            # Reuse the KV cache for the prefix shared with what was evaluated last time, in whole aligned
            # blocks: every block is always evaluated as the same batch, so the logits (and greedy output)
            # depend on the prompt alone, never on what was cached before.
            old = llm.input_ids[: llm.n_tokens]
            common = 0
            for a, b in zip(old, ids, strict=False):
                if a != b:
                    break
                common += 1
            block = self.block
            keep = min(common // block, (len(ids) - 1) // block) * block  # at least one token to evaluate
            llm.n_tokens = keep  # eval() drops the KV cache beyond n_tokens
            for start in range(keep, len(ids), block):
                llm.eval(ids[start : start + block])
            n_vocab = llm.n_vocab()
            out_ids: list[int] = []
            tokens: list[str] = []
            tops: list[dict[str, float]] = []
            finish = "length"
            generated = b""
            for _ in range(max_tokens):
                # Logits of the last evaluated position (without logits_all only that one is kept).
                logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).copy()
                best = int(logits.argmax())
                if logprobs:  # an end-of-answer step keeps its alternatives (a last entry without a token)
                    tops.append({self._detok([i]): lp for i, lp in log_softmax_top(logits, logprobs)})
                if best in self._eos:
                    finish = "stop"
                    break
                if logprobs:
                    tokens.append(self._detok([best]))
                out_ids.append(best)
                generated += llm.detokenize([best], prev_tokens=out_ids[:-1])
                if stop and apply_stop(generated.decode("utf-8", errors="ignore"), stop)[1]:
                    finish = "stop"
                    break
                llm.eval([best])
        text, _ = apply_stop(generated.decode("utf-8", errors="replace"), stop)
        wall = (time.perf_counter() - started) * 1000
        n_out = len(out_ids)
        return Completion(
            text=text,
            tokens_in=len(ids),
            tokens_out=n_out,
            tokens=tuple(tokens),
            top_logprobs=tuple(tops),
            finish_reason=finish,
            wall_ms=wall,
            usd=self.pricing.cost(len(ids), n_out),
        )

    def close(self) -> None:
        with self._lock:
            self._llm.close()
