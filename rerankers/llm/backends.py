"""One small interface over LLM runtimes: local transformers, llama.cpp, in-process vLLM, and any
OpenAI-compatible HTTP server (``rerankers/llm/openai_http.py``).

A backend turns prompts into :class:`Completion` records (text, token counts, optional top
log-probabilities of each generated token, wall time, money). Backends are registered by name in
:data:`llm_backends` (``create_backend("llama-cpp")``); heavy imports happen inside the backend and a
missing one names the extra that installs it.

Prompts are either a plain string (sent as is: a completion prompt, e.g. few-shot text for a base model)
or a :class:`ChatPrompt` (chat messages, rendered with the model's chat template, plus an optional
prefix that the answer must start with — "prefill", used to read a label's probabilities in one step).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from twostage_search.engine.errors import InputError
from twostage_search.engine.optional import require
from twostage_search.engine.registry import GROUP_PREFIX, Registry


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """Chat messages (``(role, content)`` pairs, roles ``system``/``user``/``assistant``).

    ``prefix`` is text the assistant's answer is forced to start with; the completion returned holds
    only what the model generates after it.
    """

    messages: tuple[tuple[str, str], ...]
    prefix: str = ""

    def __post_init__(self) -> None:
        for role, _ in self.messages:
            if role not in ("system", "user", "assistant"):
                raise InputError(f"unknown chat role {role!r}")


Prompt = str | ChatPrompt


@dataclass(frozen=True, slots=True)
class Pricing:
    """Money per token, in US dollars (e.g. ``Pricing.per_million(0.15, 0.60)``). Local models: 0,
    or what a GPU-hour costs divided by its throughput."""

    usd_per_input_token: float = 0.0
    usd_per_output_token: float = 0.0

    @classmethod
    def per_million(cls, usd_in: float, usd_out: float) -> Pricing:
        return cls(usd_in / 1e6, usd_out / 1e6)

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return tokens_in * self.usd_per_input_token + tokens_out * self.usd_per_output_token


@dataclass(frozen=True, slots=True)
class Completion:
    """One generation.

    Attributes:
        text: the generated text (after any prefill prefix; stop strings removed).
        tokens_in: prompt tokens processed (as the backend or the server's ``usage`` counts them).
        tokens_out: tokens generated.
        tokens: the generated tokens' text, when ``logprobs`` was asked for.
        top_logprobs: per generated token, the ``logprobs`` most likely tokens → natural-log probability.
        finish_reason: ``"stop"`` (end of answer or a stop string) or ``"length"`` (``max_tokens`` hit).
        wall_ms: wall-clock milliseconds of this generation (of the batch, for batched backends).
        usd: money, from the backend's :class:`Pricing`.
    """

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    tokens: tuple[str, ...] = ()
    top_logprobs: tuple[dict[str, float], ...] = ()
    finish_reason: str = "stop"
    wall_ms: float = 0.0
    usd: float = 0.0


@runtime_checkable
class LLMBackend(Protocol):
    """What the LLM rerankers need from a runtime.

    ``model`` names the weights (it is part of cache keys). ``generate`` decodes each prompt
    (``temperature=0``: greedy) and returns one :class:`Completion` per prompt, in order; with
    ``logprobs=k`` each generated token carries its ``k`` most likely alternatives. ``truncate`` cuts a
    text to at most ``max_tokens`` tokens of this model's tokenizer (HTTP backends estimate).
    """

    name: str
    model: str

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        logprobs: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[Completion]: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...


# LLM runtimes are registered by entry point in the ``twostage_search.llm_backends`` group.
llm_backends: Registry[Callable[..., LLMBackend]] = Registry("LLM backend", GROUP_PREFIX + "llm_backends")


def create_backend(name: str, **options: Any) -> LLMBackend:
    """Instantiate a registered backend: ``create_backend("openai", base_url=..., model=...)``."""
    return llm_backends.get(name)(**options)


# ------------------------------------------------------------------------------------------ helpers
def render_plain(prompt: ChatPrompt) -> str:
    """A template-free rendering for models without a chat template (base models)."""
    lines = [f"{role.capitalize()}: {content}" for role, content in prompt.messages]
    return "\n\n".join([*lines, "Assistant: " + prompt.prefix])


def apply_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; True if one was found."""
    cut = len(text)
    for s in stop or ():
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut], cut < len(text)


def log_softmax_top(logits: Any, k: int) -> list[tuple[int, float]]:
    """The ``k`` largest entries of ``log_softmax(logits)`` as (token id, logprob), best first (numpy)."""
    import numpy as np

    x = np.asarray(logits, dtype=np.float64)
    m = float(x.max())
    lse = m + math.log(float(np.exp(x - m).sum()))
    k = min(k, x.shape[0])
    idx = np.argpartition(-x, k - 1)[:k]
    idx = idx[np.argsort(-x[idx], kind="stable")]
    return [(int(i), float(x[i] - lse)) for i in idx]


def _check_args(max_tokens: int, temperature: float, logprobs: int | None) -> None:
    if max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise InputError("temperature must be non-negative")
    if logprobs is not None and not 1 <= logprobs <= 20:
        raise InputError("logprobs must be between 1 and 20")


# ---------------------------------------------------------------------------------------- llama.cpp
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
            n_gpu_layers=n_gpu_layers,
            seed=seed,
            logits_all=False,
            verbose=False,
        )
        self._eos = {self._llm.token_eos()}
        template = self._llm.metadata.get("tokenizer.chat_template") if chat_template == "auto" else None
        self._template = _compile_template(template) if template else None
        self._bos = self._detok([self._llm.token_bos()]) if self._llm.token_bos() >= 0 else ""
        self._eos_text = self._detok([self._llm.token_eos()])
        for stop_name in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
            ids = self._llm.tokenize(stop_name.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self._eos.add(ids[0])

    def _detok(self, ids: Sequence[int]) -> str:
        return str(self._llm.detokenize(list(ids), special=True).decode("utf-8", errors="replace"))

    def render(self, prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        if self._template is None:
            return render_plain(prompt)
        return _render_template(self._template, prompt, bos=self._bos, eos=self._eos_text)

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
        _check_args(max_tokens, temperature, logprobs)
        if temperature > 0:
            raise InputError("the llama-cpp backend decodes greedily (temperature=0) only")
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
                if best in self._eos:
                    finish = "stop"
                    break
                if logprobs:
                    tops.append({self._detok([i]): lp for i, lp in log_softmax_top(logits, logprobs)})
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


def _compile_template(template: str) -> Any:
    jinja2 = require("jinja2", "llm")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise InputError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.Undefined)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def _render_template(template: Any, prompt: ChatPrompt, *, bos: str, eos: str) -> str:
    messages = [{"role": r, "content": c} for r, c in prompt.messages]
    text = template.render(messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)
    return str(text) + prompt.prefix


# ------------------------------------------------------------------------------------- transformers
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
        _check_args(max_tokens, temperature, logprobs)
        if temperature > 0:
            raise InputError("the transformers backend decodes greedily (temperature=0) only")
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
                if best in self._eos:
                    finish = "stop"
                    break
                if logprobs:
                    lp = torch.log_softmax(logits, dim=-1)
                    values, indices = lp.topk(logprobs)
                    tops.append({self._tok.decode([int(i)]): float(v) for v, i in zip(values, indices, strict=True)})
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


# --------------------------------------------------------------------------------------------- vLLM
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
        _check_args(max_tokens, temperature, logprobs)
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


class LazyBackend:
    """A backend given by name is created on first use (constructing a reranker loads no model)."""

    def __init__(self, backend: str | LLMBackend, options: Mapping[str, Any] | None = None) -> None:
        self._spec = backend
        self._options = dict(options or {})
        self._backend: LLMBackend | None = backend if not isinstance(backend, str) else None
        self._lock = threading.Lock()

    def get(self) -> LLMBackend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    assert isinstance(self._spec, str)
                    self._backend = create_backend(self._spec, **self._options)
        return self._backend
