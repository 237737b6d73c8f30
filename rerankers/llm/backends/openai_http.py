"""Any OpenAI-compatible HTTP server as an LLM backend: vLLM's and llama.cpp's servers, hosted APIs, or
``twostage serve-llm`` (:mod:`rerankers.llm.serve`).

Requests go to ``/v1/chat/completions`` (default; chat prompts, prefill through vLLM's
``continue_final_message``) or ``/v1/completions`` (plain prompts). Each request has a timeout and is
retried with exponential back-off (honouring ``Retry-After``) on 429, 5xx, timeouts and dropped
connections; a semaphore bounds the requests in flight across all threads using the backend. Tokens are
counted from the server's ``usage``, and money is tokens × the configured :class:`Pricing`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from twostage_search.engine.errors import InputError, TwoStageError
from twostage_search.engine.optional import require
from twostage_search.engine.retry import backoff_delay, parse_retry_after
from twostage_search.rerankers.llm.backends.base import (
    ChatPrompt,
    Completion,
    Pricing,
    Prompt,
    check_args,
    render_plain,
)

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMRequestError(TwoStageError):
    """An LLM server refused a request, or kept failing after all retries."""


class OpenAIBackend:
    """Client of an OpenAI-compatible ``/v1`` API.

    Args:
        model: the model name the server expects.
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (default ``$OPENAI_BASE_URL``).
        api_key: bearer token (default ``$OPENAI_API_KEY``; none for local servers).
        api: ``"chat"`` or ``"completions"`` (plain prompts; chat prompts are rendered template-free).
        timeout: seconds per request (connect, read and write each).
        max_retries: retries after the first try on 429/5xx/timeouts/connection errors.
        backoff, max_backoff: waits are ``backoff · 2^attempt`` seconds, at most ``max_backoff``
            (a server's ``Retry-After`` wins when it asks for longer, up to ``max_backoff``).
        max_concurrency: requests in flight at once, across all callers of this backend.
        pricing: money per input/output token.
        chars_per_token: estimate used by :meth:`truncate` (the server's tokenizer is not at hand).
        extra_body: extra JSON fields sent with every request (server-specific options).
    """

    name = "openai"

    def __init__(
        self,
        model: str = "default",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api: Literal["chat", "completions"] = "chat",
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        max_concurrency: int = 8,
        pricing: Pricing | None = None,
        chars_per_token: float = 4.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        httpx = require("httpx", "llm")
        if api not in ("chat", "completions"):
            raise InputError(f"api must be 'chat' or 'completions', got {api!r}")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise InputError("max_concurrency ≥ 1, max_retries ≥ 0 and timeout > 0 are required")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1").rstrip("/")
        self.api = api
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_concurrency = max_concurrency
        self.pricing = pricing or Pricing()
        self.chars_per_token = chars_per_token
        self.extra_body = dict(extra_body or {})
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._httpx = httpx
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._slots = threading.BoundedSemaphore(max_concurrency)

    def truncate(self, text: str, max_tokens: int) -> str:
        limit = int(max_tokens * self.chars_per_token)
        if len(text) <= limit:
            return text
        cut = text[:limit]
        space = cut.rfind(" ")
        return cut[:space] if space > limit // 2 else cut

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
        bodies = [self._body(p, max_tokens, temperature, logprobs, stop) for p in prompts]
        if len(bodies) <= 1:
            return [self._request(b) for b in bodies]
        with ThreadPoolExecutor(max_workers=min(len(bodies), self.max_concurrency)) as pool:
            return list(pool.map(self._request, bodies))

    def _body(
        self, prompt: Prompt, max_tokens: int, temperature: float, logprobs: int | None, stop: Sequence[str] | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature}
        if stop:
            body["stop"] = list(stop)
        if self.api == "chat":
            chat = prompt if isinstance(prompt, ChatPrompt) else ChatPrompt((("user", prompt),))
            messages = [{"role": r, "content": c} for r, c in chat.messages]
            if chat.prefix:  # prefill: the answer continues this assistant message (vLLM's extension)
                messages.append({"role": "assistant", "content": chat.prefix})
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            body["messages"] = messages
            if logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = logprobs
        else:
            body["prompt"] = prompt if isinstance(prompt, str) else render_plain(prompt)
            if logprobs:
                body["logprobs"] = logprobs
        body.update(self.extra_body)
        return body

    def _request(self, body: dict[str, Any]) -> Completion:
        path = "/chat/completions" if self.api == "chat" else "/completions"
        httpx = self._httpx
        started = time.perf_counter()
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                with self._slots:
                    response = self._client.post(path, json=body)
                if response.status_code < 400:
                    try:
                        payload = response.json()
                    except ValueError:
                        raise LLMRequestError(
                            f"{self.base_url}{path} answered non-JSON: {response.text[:300]}"
                        ) from None
                    break
                if response.status_code not in RETRY_STATUS:
                    raise LLMRequestError(
                        f"{self.base_url}{path} answered {response.status_code}: {response.text[:300]}"
                    )
                problem = f"status {response.status_code}"
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt >= self.max_retries:
                raise LLMRequestError(f"{self.base_url}{path} failed after {attempt + 1} tries ({problem})")
            wait = backoff_delay(attempt + 1, base=self.backoff, cap=self.max_backoff, retry_after=retry_after)
            log.warning("LLM request %s (try %d); retrying in %.2fs", problem, attempt + 1, wait)
            time.sleep(wait)
            attempt += 1
        return self._completion(payload, (time.perf_counter() - started) * 1000)

    def _completion(self, payload: dict[str, Any], wall_ms: float) -> Completion:
        try:
            choice = payload["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise LLMRequestError(f"malformed response from {self.base_url}: {str(payload)[:300]}") from None
        tokens: list[str] = []
        tops: list[dict[str, float]] = []
        lp = choice.get("logprobs") or {}
        if self.api == "chat":
            text = (choice.get("message") or {}).get("content") or ""
            for entry in lp.get("content") or ():
                tokens.append(str(entry.get("token", "")))
                tops.append({str(t["token"]): float(t["logprob"]) for t in entry.get("top_logprobs") or ()})
        else:
            text = choice.get("text") or ""
            tokens = [str(t) for t in lp.get("tokens") or ()]
            tops = [{str(k): float(v) for k, v in (d or {}).items()} for d in lp.get("top_logprobs") or ()]
        usage = payload.get("usage") or {}
        n_in = int(usage.get("prompt_tokens") or 0)
        n_out = int(usage.get("completion_tokens") or len(tokens) or round(len(text) / self.chars_per_token))
        return Completion(
            text=text,
            tokens_in=n_in,
            tokens_out=n_out,
            tokens=tuple(tokens),
            top_logprobs=tuple(tops),
            finish_reason=str(choice.get("finish_reason") or "stop"),
            wall_ms=wall_ms,
            usd=self.pricing.cost(n_in, n_out),
        )

    def close(self) -> None:
        self._client.close()
