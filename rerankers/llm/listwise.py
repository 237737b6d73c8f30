"""Listwise LLM reranker: RankGPT-style permutation generation with a sliding window.

Sun et al., "Is ChatGPT Good at Search? Investigating Large Language Models as Re-Ranking Agents"
(EMNLP 2023, arXiv:2304.09542). The candidates of a window are numbered ``[1]..[n]`` and the model
answers with an order such as ``[3] > [1] > [2]``. Windows of ``window`` candidates slide from the
bottom of the first-stage ranking to the top in steps of ``stride``, so a relevant document can climb
from the bottom to the top in one pass. Passages are cut to ``max_passage_tokens`` tokens.

For depth decided while reranking (``TwoStage`` with ``ChunkedDepth``) the steps also run top-down
(:meth:`ListwiseLLMReranker.rerank_step`): the first chunk is ordered on its own, then each step shows the
current top ``window − stride`` with the next ``stride`` candidates, so that the policy can stop after any
step that put nothing new into the top 10.

Parsing never fails: repeated identifiers keep their first occurrence, out-of-range ones are dropped,
missing ones are appended in their input order, and each repair is counted (:class:`PermutationParse`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twostage_search.engine.cost import StageCost
from twostage_search.engine.deadline import Deadline, PartialRanking
from twostage_search.engine.errors import InputError
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.llm.backends import ChatPrompt, Completion, LazyBackend, LLMBackend

SYSTEM = "You are RankGPT, an intelligent assistant that can rank passages based on their relevancy to the query."

_BRACKETED = re.compile(r"\[\s*(\d+)\s*\]")
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True, slots=True)
class PermutationParse:
    """A model answer turned into a full permutation of ``0..n-1`` and what had to be repaired.

    Attributes:
        order: 0-based window positions, best first; always a permutation of ``range(n)``.
        repeated: identifiers given more than once (later occurrences ignored).
        missing: identifiers not given (appended in input order).
        out_of_range: numbers outside ``1..n`` (ignored).
    """

    order: tuple[int, ...]
    repeated: int = 0
    missing: int = 0
    out_of_range: int = 0

    @property
    def ok(self) -> bool:
        return not (self.repeated or self.missing or self.out_of_range)


def parse_permutation(text: str, n: int) -> PermutationParse:
    """Parse ``[3] > [1] > [2]`` (or bare ``3 > 1 > 2``) into a repaired permutation of ``n`` items."""
    numbers = _BRACKETED.findall(text) or _NUMBER.findall(text)
    seen: list[int] = []
    repeated = out_of_range = 0
    for raw in numbers:
        i = int(raw) - 1
        if not 0 <= i < n:
            out_of_range += 1
        elif i in seen:
            repeated += 1
        else:
            seen.append(i)
    missing = [i for i in range(n) if i not in seen]
    return PermutationParse(tuple(seen + missing), repeated, len(missing), out_of_range)


@dataclass(frozen=True, slots=True)
class WindowResult:
    """One window of the sliding pass: where it was, what the model said, how it was repaired."""

    start: int
    doc_ids: tuple[str, ...]  # the window's candidates in the order they were shown
    answer: str
    parse: PermutationParse
    tokens_in: int
    tokens_out: int
    usd: float = 0.0


@dataclass(frozen=True, slots=True)
class ListwiseResult:
    """A listwise rerank with its windows and cost (what :meth:`ListwiseLLMReranker.rerank_explained` returns)."""

    ranking: RankedList
    windows: tuple[WindowResult, ...]
    cost: StageCost

    @property
    def repairs(self) -> dict[str, int]:
        """Parse repairs over all windows: windows with any repair, repeated, missing, out-of-range ids."""
        return {
            "windows": len(self.windows),
            "windows_repaired": sum(not w.parse.ok for w in self.windows),
            "repeated": sum(w.parse.repeated for w in self.windows),
            "missing": sum(w.parse.missing for w in self.windows),
            "out_of_range": sum(w.parse.out_of_range for w in self.windows),
        }


def window_starts(n: int, window: int, stride: int) -> list[int]:
    """Start positions of the windows, bottom window first (RankGPT's back-to-front pass)."""
    if n <= 0:
        return []
    starts = []
    end = n
    while True:
        start = max(0, end - window)
        starts.append(start)
        if start == 0:
            return starts
        end -= stride


class ListwiseLLMReranker:
    """RankGPT-style listwise reranking with any :class:`~rerankers.llm.backends.LLMBackend`.

    Args:
        backend: a backend instance, or a registered name created with ``backend_options``
            (default ``"llama-cpp"`` with the bundled Qwen2.5-Coder-0.5B-Instruct; loaded on first use).
        window: candidates the model sees at once (RankGPT: 20).
        stride: how far the window moves up each step (RankGPT: 10); ``stride < window`` overlaps windows.
        max_passage_tokens: each passage is cut to this many tokens of the model's tokenizer.
        use_title: show the title before the text.
        prefill: text the answer is forced to start with (``"["`` helps very small models keep the format).
        max_tokens: answer budget per window (default: ``6 · window + 8``, enough for ``[i] >`` per passage).

    Scores are ``n − position`` of the final order (higher is better). The ranking is deterministic for a
    deterministic backend (greedy decoding). Thread-safe: no per-call state is kept on the instance.
    """

    name = "listwise-llm"

    def __init__(
        self,
        backend: LLMBackend | str = "llama-cpp",
        *,
        window: int = 20,
        stride: int = 10,
        max_passage_tokens: int = 100,
        use_title: bool = True,
        prefill: str = "",
        max_tokens: int | None = None,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        if window < 2 or not 1 <= stride <= window:
            raise InputError("window must be ≥ 2 and 1 ≤ stride ≤ window")
        if max_passage_tokens < 8:
            raise InputError("max_passage_tokens must be at least 8")
        self.window = window
        self.stride = stride
        self.max_passage_tokens = max_passage_tokens
        self.use_title = use_title
        self.prefill = prefill
        self.max_tokens = max_tokens or 6 * window + 8
        self._backend = LazyBackend(backend, backend_options)

    @property
    def backend(self) -> LLMBackend:
        """The LLM backend, created on first use (constructing the reranker loads no model)."""
        return self._backend.get()

    def _passage(self, c: Candidate) -> str:
        text = f"{c.title}. {c.text}" if self.use_title and c.title else c.text
        return " ".join(self.backend.truncate(" ".join(text.split()), self.max_passage_tokens).split())

    def prompt(self, query: str, passages: Sequence[str]) -> ChatPrompt:
        """The RankGPT instruction with the passages numbered ``[1]..[n]``."""
        n = len(passages)
        listed = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
        user = (
            f"I will provide you with {n} passages, each indicated by a numerical identifier []. "
            f"Rank the passages based on their relevance to the search query: {query}\n\n"
            f"{listed}\n\n"
            f"Search Query: {query}\n"
            f"Rank the {n} passages above based on their relevance to the search query. All the passages "
            "should be included and listed using identifiers, in descending order of relevance. The output "
            "format should be [] > [], e.g., [2] > [1]. Only respond with the ranking results, do not say "
            "any word or explain."
        )
        return ChatPrompt((("system", SYSTEM), ("user", user)), prefix=self.prefill)

    def rerank_explained(
        self, query: Query, candidates: Sequence[Candidate], *, deadline: Deadline | None = None
    ) -> ListwiseResult:
        """Rerank and return the windows (answers, repairs) and the cost.

        With a ``deadline``, no window starts after it has passed; the windows done so far keep their order.
        """
        started = time.perf_counter()
        order = sorted(candidates, key=lambda c: (-c.score, c.doc_id))  # first-stage order
        windows, cost = self._pass(query, order, deadline)
        n = len(order)
        ranking = RankedList.from_scores(query.query_id, order, [float(n - i) for i in range(n)])
        return ListwiseResult(ranking, windows, _timed(cost, started, n))

    def rerank_step(
        self, query: Query, ranked: Sequence[Candidate], new: Sequence[Candidate]
    ) -> tuple[list[Candidate], StageCost]:
        """One top-down step (:class:`~engine.protocols.RerankInSteps`, for depth decided while reranking).

        ``new`` (the next candidates in first-stage order) is shown together with the top
        ``window − min(len(new), stride)`` of ``ranked`` (the order so far): one window when ``new`` holds at
        most ``stride`` candidates (RankGPT's 20/10: the current top 10 and the next 10), otherwise a
        back-to-front pass over them. What the window pushes down stays above the rest of ``ranked``, which
        lost to the documents kept on top before. With ``ranked`` empty it orders ``new`` as ``rerank`` does.
        """
        started = time.perf_counter()
        keep = self.window - min(len(new), self.stride) if ranked else 0
        block = [*ranked[:keep], *new]
        _, cost = self._pass(query, block, None)
        return [*block, *ranked[keep:]], _timed(cost, started, len(new))

    def _pass(
        self, query: Query, order: list[Candidate], deadline: Deadline | None
    ) -> tuple[tuple[WindowResult, ...], StageCost]:
        """Slide the windows over ``order`` back to front, reordering it in place; the windows and their
        tokens (the cost's time and documents are the caller's)."""
        windows: list[WindowResult] = []
        if len(order) > 1:
            passages = {c.doc_id: self._passage(c) for c in order}
            for start in window_starts(len(order), self.window, self.stride):
                if deadline is not None and deadline.expired():
                    break
                block = order[start : start + self.window]
                prompt = self.prompt(query.text, [passages[c.doc_id] for c in block])
                completion: Completion = self.backend.generate([prompt], max_tokens=self.max_tokens)[0]
                answer = self.prefill + completion.text
                parsed = parse_permutation(answer, len(block))
                order[start : start + len(block)] = [block[i] for i in parsed.order]
                windows.append(
                    WindowResult(
                        start,
                        tuple(c.doc_id for c in block),
                        answer,
                        parsed,
                        completion.tokens_in,
                        completion.tokens_out,
                        completion.usd,
                    )
                )
        tokens_in = sum(w.tokens_in for w in windows)
        tokens_out = sum(w.tokens_out for w in windows)
        usd = sum(w.usd for w in windows)
        return tuple(windows), StageCost("rerank", 0.0, tokens_in=tokens_in, tokens_out=tokens_out, usd=usd)

    def rerank_until(self, query: Query, candidates: Sequence[Candidate], deadline: Deadline) -> PartialRanking:
        """Check ``deadline`` between windows (HonoursDeadline); cut short, the answer is marked degraded.

        Every candidate is in the ranking (windows not run leave their part in first-stage order).
        """
        result = self.rerank_explained(query, candidates, deadline=deadline)
        planned = len(window_starts(len(candidates), self.window, self.stride)) if len(candidates) > 1 else 0
        return PartialRanking(result.ranking, (result.cost,), degraded=len(result.windows) < planned)

    def rerank_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, StageCost]:
        result = self.rerank_explained(query, candidates)
        return result.ranking, result.cost

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return self.rerank_explained(query, candidates).ranking


def _timed(cost: StageCost, started: float, docs: int) -> StageCost:
    return dataclasses.replace(cost, wall_ms=(time.perf_counter() - started) * 1000, docs=docs)
