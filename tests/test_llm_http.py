"""The ``openai`` backend against a real OpenAI-compatible server process serving the bundled model.

The server is this project's ``twostage serve-llm`` (:mod:`rerankers.llm.serve`), started on 127.0.0.1 on
a free port and killed after the module. Its ``--fault-injection`` switch makes it answer the next
requests with given HTTP statuses or slowly, to test retries, back-off and timeouts end to end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import need
from twostage_search.engine.types import Candidate, Query
from twostage_search.rerankers.llm.backends import ChatPrompt, Pricing
from twostage_search.rerankers.llm.backends.openai_http import LLMRequestError, OpenAIBackend
from twostage_search.rerankers.llm.lore import LoreReranker

need("llama_cpp", "llm")
need("uvicorn", "service")
need("httpx", "llm")

MODEL = "local-qwen"
QUESTION = ChatPrompt((("user", "What is the capital of France? Answer in one word."),))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``twostage serve-llm`` on a free port; yields its base URL (without ``/v1``)."""
    port = _free_port()
    log = Path(tmp_path_factory.mktemp("llm-server")) / "server.log"
    cmd = [sys.executable, "-m", "twostage_search.cli", "serve-llm", "--port", str(port), "--threads", "2"]
    cmd += ["--served-model-name", MODEL, "--fault-injection"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{url}/healthz")["status"] == "ok":
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"LLM server did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def faults(server: str, statuses=(), delay_s: float = 0.0, retry_after: float | None = None) -> int:
    """Queue failures on the server; returns how many /v1 requests it has seen so far."""
    body = {"statuses": list(statuses), "delay_s": delay_s, "retry_after": retry_after}
    return int(_post(f"{server}/_faults", body)["requests"])


def seen(server: str) -> int:
    return int(_get(f"{server}/_faults")["requests"])


def client(server: str, **options) -> OpenAIBackend:
    options.setdefault("backoff", 0.05)
    return OpenAIBackend(MODEL, base_url=f"{server}/v1", **options)


def test_models_and_health(server):
    assert _get(f"{server}/v1/models")["data"][0]["id"] == MODEL
    assert _get(f"{server}/healthz") == {"status": "ok", "model": MODEL}


def test_chat_over_http_equals_the_local_model(server, llm):
    remote = client(server, pricing=Pricing.per_million(1.0, 2.0)).generate([QUESTION], max_tokens=8, logprobs=5)[0]
    here = llm.generate([QUESTION], max_tokens=8, logprobs=5)[0]
    assert remote.text == here.text and remote.text.startswith("Paris")
    assert (remote.tokens_in, remote.tokens_out) == (here.tokens_in, here.tokens_out)  # from the server's usage
    assert remote.tokens == here.tokens
    assert remote.top_logprobs[0] == pytest.approx(here.top_logprobs[0])
    assert remote.usd == pytest.approx(here.tokens_in * 1e-6 + here.tokens_out * 2e-6)
    assert remote.wall_ms > 0


def test_completions_api_with_stop(server, llm):
    backend = client(server, api="completions")
    remote = backend.generate(["Count: one, two, three,"], max_tokens=12, stop=[","], logprobs=2)[0]
    here = llm.generate(["Count: one, two, three,"], max_tokens=12, stop=[","])[0]
    assert remote.text == here.text and "," not in remote.text
    assert len(remote.top_logprobs) == len(remote.tokens) >= 1


def test_lore_over_http_uses_prefill_and_matches_local(server, llm, tiny_docs):
    doc = next(d for d in tiny_docs if d.doc_id == "d01")
    cands = [Candidate(doc.doc_id, 1.0, doc.text, doc.title)]
    query = Query("q", "what is the capital of france")
    remote = LoreReranker(client(server), examples=None).rerank_explained(query, cands).judgements[0]
    here = LoreReranker(llm, examples=None).rerank_explained(query, cands).judgements[0]
    assert remote.label == here.label and remote.source == "logprobs"
    assert remote.probs == pytest.approx(here.probs, abs=1e-6)


def test_retries_429_and_500_then_succeeds(server):
    before = faults(server, statuses=[429, 500])
    out = client(server, max_retries=3).generate([QUESTION], max_tokens=2)[0]
    assert out.text.startswith("Paris")
    assert seen(server) - before == 3  # two failures, then the answer


def test_retry_after_is_honoured(server):
    faults(server, statuses=[429], retry_after=0.6)
    started = time.perf_counter()
    client(server, max_retries=2, backoff=0.01).generate([QUESTION], max_tokens=1)
    assert time.perf_counter() - started >= 0.6


def test_gives_up_after_max_retries(server):
    before = faults(server, statuses=[503, 503, 503])
    with pytest.raises(LLMRequestError, match=r"failed after 2 tries \(status 503\)"):
        client(server, max_retries=1).generate([QUESTION], max_tokens=1)
    assert seen(server) - before == 2
    faults(server)  # clear the third


def test_client_errors_are_not_retried(server):
    before = faults(server, statuses=[400])
    with pytest.raises(LLMRequestError, match="answered 400"):
        client(server, max_retries=3).generate([QUESTION], max_tokens=1)
    assert seen(server) - before == 1


def test_timeout_is_honoured(server):
    faults(server, statuses=[500], delay_s=3.0)  # a slow answer (then an error, so the server stays idle)
    started = time.perf_counter()
    try:
        with pytest.raises(LLMRequestError, match="ReadTimeout"):
            client(server, timeout=0.5, max_retries=0).generate([QUESTION], max_tokens=1)
        assert time.perf_counter() - started < 2.5
    finally:
        faults(server)


def test_concurrent_requests_keep_order(server):
    prompts = [ChatPrompt((("user", f"Repeat the number {i} and nothing else."),)) for i in (3, 7, 9)]
    outs = client(server, max_concurrency=2).generate(prompts, max_tokens=3)
    assert [o.text.strip()[:1] for o in outs] == ["3", "7", "9"]


def test_unreachable_server_fails_after_retries():
    backend = OpenAIBackend(MODEL, base_url=f"http://127.0.0.1:{_free_port()}/v1", max_retries=1, backoff=0.01)
    with pytest.raises(LLMRequestError, match="ConnectError"):
        backend.generate([QUESTION], max_tokens=1)
