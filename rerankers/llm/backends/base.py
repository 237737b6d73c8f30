"""The shared interface of the LLM runtimes: prompts, completions, pricing, the backend protocol and its
registry, and the helpers every runtime uses.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from twostage_search.engine.errors import InputError
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
        top_logprobs: per generated token, the ``logprobs`` most likely tokens → natural-log probability;
            local backends add a last entry, without a token, for the step whose best token ended the
            answer (its alternatives can still hold the answer's label).
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


def check_args(max_tokens: int, temperature: float, logprobs: int | None, *, greedy_only: str | None = None) -> None:
    """Validate ``generate``'s arguments; ``greedy_only`` names a backend that decodes greedily only."""
    if max_tokens < 1:
        raise InputError(f"max_tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise InputError("temperature must be non-negative")
    if logprobs is not None and not 1 <= logprobs <= 20:
        raise InputError("logprobs must be between 1 and 20")
    if greedy_only is not None and temperature > 0:
        raise InputError(f"the {greedy_only} backend decodes greedily (temperature=0) only")


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
