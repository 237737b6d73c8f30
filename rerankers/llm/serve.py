"""A small OpenAI-compatible server over a local LLM backend (``twostage serve-llm``).

Serves ``/v1/completions``, ``/v1/chat/completions`` (with ``logprobs``/``top_logprobs``, ``stop``,
``usage``, and vLLM's ``continue_final_message`` prefill), ``/v1/models`` and ``/healthz`` — enough for
the ``openai`` backend, or any OpenAI client, to use the bundled model over HTTP. Decoding is greedy.

``--fault-injection`` adds ``POST /_faults`` to make the next requests fail with given HTTP statuses or
answer slowly; the tests use it to check the client's retries and timeouts against a real server. Never
enable it in production.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from twostage_search.engine.optional import require
from twostage_search.rerankers.llm.backends import ChatPrompt, Completion, LLMBackend, create_backend


def _stop_list(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def _token_steps(c: Completion) -> list[tuple[str, dict[str, float]]]:
    """(token, alternatives) per generated token; the OpenAI format has no entry for the end-of-answer step."""
    return list(zip(c.tokens, c.top_logprobs[: len(c.tokens)], strict=True))


def _usage(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.tokens_in, "completion_tokens": c.tokens_out, "total_tokens": c.tokens_in + c.tokens_out}


class CompletionRequest(BaseModel):
    """``POST /v1/completions`` (the fields we honour)."""

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = 16
    temperature: float = 0.0
    logprobs: int | None = None
    stop: str | list[str] | None = None


class Message(BaseModel):
    """One chat message."""

    role: str
    content: str


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``; ``continue_final_message`` continues a final assistant message (prefill)."""

    model: str | None = None
    messages: list[Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 0.0
    logprobs: bool = False
    top_logprobs: int | None = None
    stop: str | list[str] | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool = True


class FaultRequest(BaseModel):
    """``POST /_faults``: statuses for the next requests, a delay for every request, a Retry-After header."""

    statuses: list[int] = Field(default_factory=list)
    delay_s: float = 0.0
    retry_after: float | None = None


class _Faults:
    """Queued failures and an optional delay, for fault-injection tests."""

    def __init__(self) -> None:
        self.statuses: deque[int] = deque()
        self.delay_s = 0.0
        self.retry_after: float | None = None
        self.requests = 0
        self.lock = threading.Lock()

    def take(self) -> tuple[int | None, float]:
        with self.lock:
            self.requests += 1
            status = self.statuses.popleft() if self.statuses else None
            return status, self.delay_s


def create_app(backend: LLMBackend, *, model_name: str | None = None, fault_injection: bool = False) -> Any:
    """The FastAPI application serving ``backend`` under the model name ``model_name``."""
    require("fastapi", "service")
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    served = model_name or backend.model
    faults = _Faults()
    app = FastAPI(title="twostage LLM server")

    def injected() -> Any:
        if not fault_injection:
            return None
        status, delay = faults.take()
        if delay:
            time.sleep(delay)
        if status is not None:
            headers = {"Retry-After": str(faults.retry_after)} if faults.retry_after is not None else None
            body = {"error": {"message": f"injected fault {status}", "type": "injected", "code": status}}
            return JSONResponse(body, status_code=status, headers=headers)
        return None

    def run(prompts: Sequence[str | ChatPrompt], max_tokens: int, logprobs: int | None, stop: Any) -> list[Completion]:
        from twostage_search.engine.errors import TwoStageError

        try:
            return backend.generate(prompts, max_tokens=max_tokens, logprobs=logprobs, stop=_stop_list(stop))
        except TwoStageError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "model": served}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served, "object": "model", "owned_by": "twostage"}]}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest) -> Any:
        fault = injected()
        if fault is not None:
            return fault
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        outs = run(prompts, req.max_tokens, req.logprobs, req.stop)
        choices = []
        for i, c in enumerate(outs):
            lp = None
            if req.logprobs:
                lp = {
                    "tokens": list(c.tokens),
                    "token_logprobs": [top.get(t) for t, top in _token_steps(c)],
                    "top_logprobs": [dict(top) for _, top in _token_steps(c)],
                }
            choices.append({"index": i, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
        usage = {k: sum(_usage(c)[k] for c in outs) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": served,
            "choices": choices,
            "usage": usage,
        }

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> Any:
        fault = injected()
        if fault is not None:
            return fault
        messages = [(m.role, m.content) for m in req.messages]
        prefix = ""
        if (
            (req.continue_final_message or not req.add_generation_prompt)
            and messages
            and messages[-1][0] == "assistant"
        ):
            prefix = messages.pop()[1]
        try:
            prompt = ChatPrompt(tuple(messages), prefix=prefix)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        k = (req.top_logprobs or 1) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens or 256
        c = run([prompt], max_tokens, k, req.stop)[0]
        lp = None
        if req.logprobs:
            lp = {
                "content": [
                    {
                        "token": t,
                        "logprob": top.get(t, min(top.values(), default=0.0)),
                        "top_logprobs": [{"token": a, "logprob": v} for a, v in top.items()],
                    }
                    for t, top in _token_steps(c)
                ]
            }
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": lp,
                    "finish_reason": c.finish_reason,
                }
            ],
            "usage": _usage(c),
        }

    if fault_injection:

        @app.post("/_faults")
        def set_faults(req: FaultRequest) -> dict[str, Any]:
            with faults.lock:
                faults.statuses = deque(req.statuses)
                faults.delay_s = req.delay_s
                faults.retry_after = req.retry_after
                return {"requests": faults.requests}

        @app.get("/_faults")
        def get_faults() -> dict[str, Any]:
            with faults.lock:
                return {"requests": faults.requests, "pending": list(faults.statuses), "delay_s": faults.delay_s}

    return app


def serve(args: argparse.Namespace) -> int:
    uvicorn = require("uvicorn", "service")
    options: dict[str, Any] = {"model": args.model}
    if args.threads:
        options["threads"] = args.threads
    backend = create_backend(args.backend, **options)
    app = create_app(backend, model_name=args.served_model_name, fault_injection=args.fault_injection)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
