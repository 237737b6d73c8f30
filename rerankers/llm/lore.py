"""The LORE relevance model as a pointwise, graded reranker.

After Alibaba's LORE report (2025, "LORE: ... Large Generative Models for E-commerce Relevance"): the
LLM judges each (query, item) pair in two steps — **path construction** (turn the query's needs into
concrete item attributes, using domain knowledge) and **path following** (check each attribute against
the item's title, attributes and description, applying explicit rules) — and ends with a graded label
**L1** (irrelevant) … **L4** (fully relevant).

Decoding is greedy. The answer format is strict: reasoning lines, then ``Label: L<1-4>``. The label is
parsed from the text; when the backend returns log-probabilities, the probabilities of ``1``–``4`` at
the label position (normalised over the four) give the expected label ``E[L]``. If no label can be
parsed, the model is asked to continue ``…\\nLabel: L`` for one token and the label is read from that.
A document's score is ``E[L]`` (or the parsed label) plus a tie-break below 0.001 from its first-stage
rank, so equal labels keep first-stage order.

Serving tiers, as in LORE: judgements are cached (bounded LRU keyed by everything that changes a
judgement: the backend's identity, the rendered instructions with their few-shot examples, the answer
mode and log-probability setting, the budgets, the query and the item's title and text; building a
key loads no model) so repeated head queries cost nothing, and an ``is_hard(query, candidates)`` hook
decides which queries get the LLM in real time; the others are served from the cache when it holds
every candidate, else by a cheaper ``fallback`` reranker (default: first-stage order).

The prompt (label scale, rule presets, examples) lives in :mod:`.lore_prompts`, label reading and
probabilities in :mod:`.lore_labels`; both are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twostage_search.engine.cache import ResultCache
from twostage_search.engine.cost import StageCost
from twostage_search.engine.deadline import Deadline, PartialRanking
from twostage_search.engine.errors import InputError
from twostage_search.engine.protocols import ReportsCost, Reranker
from twostage_search.engine.types import Candidate, Query, RankedList
from twostage_search.rerankers.llm.backends import ChatPrompt, Completion, LazyBackend, LLMBackend
from twostage_search.rerankers.llm.lore_labels import (
    NEUTRAL,
    Judgement,
    JudgementCache,
    label_position,
    label_probabilities,
    parse_label,
    read_judgement,
)
from twostage_search.rerankers.llm.lore_prompts import (
    DOMAINS,
    EXAMPLES,
    LABELS,
    PROMPT_VERSION,
    RULESETS,
    Example,
    example_answer,
    item_text,
    system_prompt,
)

__all__ = [
    "DOMAINS",
    "EXAMPLES",
    "LABELS",
    "NEUTRAL",
    "PROMPT_VERSION",
    "RULESETS",
    "Example",
    "HardPolicy",
    "Judgement",
    "JudgementCache",
    "LoreReranker",
    "LoreResult",
    "label_position",
    "label_probabilities",
    "parse_label",
]


@dataclass(frozen=True, slots=True)
class LoreResult:
    """What :meth:`LoreReranker.rerank_explained` returns.

    ``judgements`` are in ranking order (empty when the query was not hard and went to the fallback);
    ``cost.docs`` counts documents the LLM judged for this call (cache hits are free and counted in
    ``cached``; a query sent to the fallback carries the fallback's cost); ``hard`` is what the policy
    hook said.
    """

    ranking: RankedList
    judgements: tuple[Judgement, ...]
    cost: StageCost
    hard: bool
    judged: int
    cached: int

    @property
    def sources(self) -> dict[str, int]:
        """How the labels were read: counts of ``parsed``/``logprobs``/``continuation``/``unreadable``."""
        out: dict[str, int] = {}
        for j in self.judgements:
            out[j.source] = out.get(j.source, 0) + 1
        return out


HardPolicy = Callable[[Query, Sequence[Candidate]], bool]


class LoreReranker:
    """LORE graded relevance judgements (L1–L4) as a pointwise reranker.

    Args:
        backend: an :class:`~rerankers.llm.backends.LLMBackend`, or a registered name created with
            ``backend_options`` on first use (default ``"llama-cpp"``, the bundled Qwen2.5-Coder-0.5B-Instruct).
        domain: a preset (``"e-commerce"``, ``"science"``) or a free description of the search domain.
        rules: rule strings, or a preset name (default: the domain's preset, else ``"e-commerce"``).
        examples: few-shot examples shown before each item: None (zero-shot, the default), ``"default"``
            (the domain preset's examples), a preset name, or a sequence of :class:`Example`. They help weak
            models keep the format, at about 100 prompt tokens each (paid once per query with KV reuse).
        reasoning: True (LORE: path construction and following, then ``Label: Lx``); False asks for the
            label only and reads it as P(L1..L4) from one forward pass with the answer prefilled as
            ``Label: L`` (constrained output: one token per document).
        max_reasoning_tokens: answer budget in reasoning mode.
        max_item_tokens: the item's description is cut to this many tokens.
        logprobs: how many alternatives to ask for per generated token (None: don't ask; scores are then
            the parsed labels).
        tie_break: scale of the first-stage tie-break added to each score (keep it below the smallest
            label difference that matters).
        cache: a :class:`JudgementCache` (share one between instances to share head-query judgements);
            default: a private one of 100,000 entries; ``JudgementCache(0)`` disables caching.
        is_hard: ``is_hard(query, candidates) -> bool``; queries it rejects are not sent to the LLM
            (default: every query is hard).
        fallback: reranker for queries that are not hard and not fully cached (default: first-stage order;
            e.g. a cross-encoder distilled from this judge).
    """

    name = "lore"

    def __init__(
        self,
        backend: LLMBackend | str = "llama-cpp",
        *,
        domain: str = "e-commerce",
        rules: Sequence[str] | str | None = None,
        examples: Sequence[Example] | str | None = None,
        reasoning: bool = False,
        max_reasoning_tokens: int = 160,
        max_item_tokens: int = 160,
        logprobs: int | None = 10,
        tie_break: float = 1e-3,
        cache: ResultCache[Judgement] | None = None,
        is_hard: HardPolicy | None = None,
        fallback: Reranker | None = None,
        backend_options: Mapping[str, Any] | None = None,
    ) -> None:
        if max_reasoning_tokens < 4 or max_item_tokens < 8:
            raise InputError("max_reasoning_tokens must be ≥ 4 and max_item_tokens ≥ 8")
        if not 0 <= tie_break < 0.5:
            raise InputError("tie_break must be in [0, 0.5)")
        preset = domain if domain in RULESETS else "e-commerce"
        self.domain = DOMAINS.get(domain, domain)
        self.rules = tuple(RULESETS[rules] if isinstance(rules, str) else rules or RULESETS[preset])
        if examples == "default":
            examples = preset
        self.examples = tuple(EXAMPLES[examples] if isinstance(examples, str) else examples or ())
        self.reasoning = reasoning
        self.max_reasoning_tokens = max_reasoning_tokens
        self.max_item_tokens = max_item_tokens
        self.logprobs = logprobs
        self.tie_break = tie_break
        self.cache = cache if cache is not None else JudgementCache()
        self.is_hard = is_hard
        self.fallback = fallback
        self._backend = LazyBackend(backend, backend_options)
        self._backend_id = _backend_identity(backend, backend_options)
        self.prompt_id = self._prompt_id()

    # ------------------------------------------------------------------------------------ prompt
    @property
    def backend(self) -> LLMBackend:
        """The LLM backend, created on first use (constructing the reranker loads no model)."""
        return self._backend.get()

    def _prompt_id(self) -> str:
        """A digest of everything except the pair that changes a judgement (no model is loaded for it).

        The backend's identity; the instructions as rendered; every few-shot example whole; the answer
        mode; the log-probability setting; the item and answer budgets.
        """
        examples = [[e.query, e.title, e.description, example_answer(e, self.reasoning)] for e in self.examples]
        config = [self._backend_id, self.system_prompt(), examples, self.reasoning, self.logprobs]
        config += [self.max_item_tokens, self.max_reasoning_tokens]
        return PROMPT_VERSION + ":" + hashlib.sha1(json.dumps(config).encode()).hexdigest()[:16]

    def system_prompt(self) -> str:
        """The instructions: the two reasoning steps, the rules, the label scale, the output format."""
        return system_prompt(self.domain, self.rules, self.reasoning)

    def _item(self, query: str, title: str, text: str) -> str:
        return item_text(query, title, self.backend.truncate(" ".join(text.split()), self.max_item_tokens))

    def prompt(self, query: str, candidate: Candidate) -> ChatPrompt:
        """The chat prompt for one (query, item) pair. Shared text comes first (prefix caching)."""
        messages: list[tuple[str, str]] = [("system", self.system_prompt())]
        for ex in self.examples:
            messages += [
                ("user", self._item(ex.query, ex.title, ex.description)),
                ("assistant", example_answer(ex, self.reasoning)),
            ]
        messages.append(("user", self._item(query, candidate.title, candidate.text)))
        return ChatPrompt(tuple(messages), prefix="" if self.reasoning else "Label: L")

    # --------------------------------------------------------------------------------- judging
    def cache_key(self, query: Query, c: Candidate) -> Hashable:
        """The judgement cache's key for a pair: :attr:`prompt_id`, the query and the item's title and text.

        The document id is not part of it (the same item under two ids is one judgement).
        """
        digest = hashlib.sha1(f"{query.text}\x00{c.title}\x00{c.text}".encode()).hexdigest()
        return (self.prompt_id, digest)

    def _read(self, completion: Completion, doc_id: str, prefix: str) -> Judgement:
        return read_judgement(completion, doc_id, prefix, logprobs=bool(self.logprobs))

    def judge(self, query: Query, candidates: Sequence[Candidate]) -> list[Judgement]:
        """Judge every candidate with the LLM (no cache, no policy), in input order."""
        if not candidates:
            return []
        prompts = [self.prompt(query.text, c) for c in candidates]
        max_tokens = self.max_reasoning_tokens if self.reasoning else 1
        completions = self.backend.generate(prompts, max_tokens=max_tokens, logprobs=self.logprobs)
        out = [
            self._read(comp, c.doc_id, p.prefix) for comp, c, p in zip(completions, candidates, prompts, strict=True)
        ]
        # Fallback: no label in the text → continue "…\nLabel: L" for one token and read the label there.
        retry = [i for i, j in enumerate(out) if j.label is None]
        if retry and self.reasoning:
            follow = [
                ChatPrompt(prompts[i].messages, prefix=completions[i].text.rstrip() + "\nLabel: L") for i in retry
            ]
            extra = self.backend.generate(follow, max_tokens=1, logprobs=self.logprobs or 10)
            for i, p, comp in zip(retry, follow, extra, strict=True):
                j = self._read(comp, candidates[i].doc_id, p.prefix)
                out[i] = replace(
                    j,
                    reasoning=out[i].reasoning,
                    source="continuation" if j.label is not None else "unreadable",
                    tokens_in=out[i].tokens_in + comp.tokens_in,
                    tokens_out=out[i].tokens_out + comp.tokens_out,
                )
        return out

    def rerank_explained(self, query: Query, candidates: Sequence[Candidate], *, force: bool = False) -> LoreResult:
        """Rerank with the judgements (reasoning, labels, probabilities) and the cost.

        ``force=True`` ignores the ``is_hard`` policy (e.g. to pre-compute head queries into the cache).
        """
        started = time.perf_counter()
        keys = [self.cache_key(query, c) for c in candidates] if candidates else []
        found = [self.cache.get(k) for k in keys]
        hard = force or self.is_hard is None or bool(self.is_hard(query, candidates))
        if not hard and any(j is None for j in found):
            if isinstance(self.fallback, ReportsCost):  # e.g. a cross-encoder: its own tokens and time
                ranking, cost = self.fallback.rerank_with_cost(query, candidates)
            else:
                ranking = (
                    self.fallback.rerank(query, candidates)
                    if self.fallback is not None
                    else RankedList.from_candidates(query.query_id, candidates)
                )
                cost = StageCost("rerank", (time.perf_counter() - started) * 1000, docs=0)
            return LoreResult(ranking, (), cost, hard=False, judged=0, cached=0)
        todo = [i for i, j in enumerate(found) if j is None]
        fresh = self.judge(query, [candidates[i] for i in todo])
        judgements: list[Judgement] = []
        fresh_by_index = dict(zip(todo, fresh, strict=True))
        usd = 0.0
        for i, key in enumerate(keys):
            cached = found[i]
            if cached is not None:
                judgements.append(replace(cached, doc_id=candidates[i].doc_id, cached=True, tokens_in=0, tokens_out=0))
            else:
                j = fresh_by_index[i]
                self.cache.put(key, j)
                judgements.append(j)
        scores = self._scores(candidates, judgements)
        ranking = RankedList.from_scores(query.query_id, candidates, scores)
        tokens_in = sum(j.tokens_in for j in fresh)
        tokens_out = sum(j.tokens_out for j in fresh)
        pricing = getattr(self.backend, "pricing", None)
        if pricing is not None:
            usd = pricing.cost(tokens_in, tokens_out)
        cost = StageCost(
            "rerank",
            (time.perf_counter() - started) * 1000,
            docs=len(fresh),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            usd=usd,
        )
        position = {doc_id: i for i, doc_id in enumerate(ranking.doc_ids)}
        ordered = tuple(sorted(judgements, key=lambda j: position[j.doc_id]))
        return LoreResult(ranking, ordered, cost, hard=True, judged=len(fresh), cached=len(candidates) - len(fresh))

    def _scores(self, candidates: Sequence[Candidate], judgements: Sequence[Judgement]) -> list[float]:
        """``E[L]`` (or the label) plus ``tie_break · (n − r)/(n + 1)`` for first-stage rank r (0 = best).

        The tie-break is strictly between 0 and ``tie_break``, larger for better first-stage ranks.
        """
        n = len(candidates)
        first = sorted(range(n), key=lambda i: (-candidates[i].score, candidates[i].doc_id))
        rank = {i: r for r, i in enumerate(first)}
        return [j.expected + self.tie_break * (n - rank[i]) / (n + 1) for i, j in enumerate(judgements)]

    def precompute(self, queries: Sequence[tuple[Query, Sequence[Candidate]]]) -> int:
        """Judge head queries ahead of time into the cache; returns the number of new judgements."""
        return sum(self.rerank_explained(q, cands, force=True).judged for q, cands in queries)

    def rerank_until(self, query: Query, candidates: Sequence[Candidate], deadline: Deadline) -> PartialRanking:
        """Judge pointwise, one candidate at a time in first-stage order, while ``deadline`` has not passed.

        Cached judgements are used at no cost; candidates not judged in time are returned as ``unscored``
        (served below in first-stage order). Queries the ``is_hard`` policy rejects go to the fallback
        whole, as in :meth:`rerank_explained`.
        """
        started = time.perf_counter()
        hard = self.is_hard is None or bool(self.is_hard(query, candidates))
        if not hard:
            result = self.rerank_explained(query, candidates)
            return PartialRanking(result.ranking, (result.cost,))
        order = sorted(candidates, key=lambda c: (-c.score, c.doc_id))  # best first-stage candidates first
        scored: list[Candidate] = []
        judgements: list[Judgement] = []
        unscored: list[Candidate] = []
        fresh: list[Judgement] = []
        for c in order:
            key = self.cache_key(query, c)
            cached = self.cache.get(key)
            if cached is not None:
                judgements.append(replace(cached, cached=True, tokens_in=0, tokens_out=0))
            elif deadline.expired():
                unscored.append(c)
                continue
            else:
                j = self.judge(query, [c])[0]
                self.cache.put(key, j)
                fresh.append(j)
                judgements.append(j)
            scored.append(c)
        ranking = RankedList.from_scores(query.query_id, scored, self._scores(scored, judgements))
        tokens_in = sum(j.tokens_in for j in fresh)
        tokens_out = sum(j.tokens_out for j in fresh)
        pricing = getattr(self.backend, "pricing", None) if fresh else None
        usd = pricing.cost(tokens_in, tokens_out) if pricing is not None else 0.0
        ms = (time.perf_counter() - started) * 1000
        cost = StageCost("rerank", ms, docs=len(fresh), tokens_in=tokens_in, tokens_out=tokens_out, usd=usd)
        return PartialRanking(ranking, (cost,), tuple(unscored))

    def rerank_with_cost(self, query: Query, candidates: Sequence[Candidate]) -> tuple[RankedList, StageCost]:
        result = self.rerank_explained(query, candidates)
        return result.ranking, result.cost

    def rerank(self, query: Query, candidates: Sequence[Candidate]) -> RankedList:
        return self.rerank_explained(query, candidates).ranking


# Backend options that change how fast or how much a judgement costs, never what it says.
_NEUTRAL_OPTIONS = frozenset({"threads", "pricing", "timeout", "max_concurrency", "retries", "backoff"})


def _backend_identity(backend: LLMBackend | str, options: Mapping[str, Any] | None) -> list[Any]:
    """What names the model that judges, without loading it.

    A registered name: the name and its options (e.g. ``model``, ``chat_template``; not those in
    ``_NEUTRAL_OPTIONS`` such as ``threads``); an instance: its
    class, ``name`` and ``model``.
    """
    if isinstance(backend, str):
        kept = sorted((k, repr(v)) for k, v in (options or {}).items() if k not in _NEUTRAL_OPTIONS)
        return [backend, kept]
    kind = f"{type(backend).__module__}.{type(backend).__qualname__}"
    return [kind, getattr(backend, "name", ""), getattr(backend, "model", "")]
