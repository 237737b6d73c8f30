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

Serving tiers, as in LORE: judgements are cached (bounded LRU keyed by model, prompt, query, document
id and text hash) so repeated head queries cost nothing, and an ``is_hard(query, candidates)`` hook
decides which queries get the LLM in real time; the others are served from the cache when it holds
every candidate, else by a cheaper ``fallback`` reranker (default: first-stage order).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
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

PROMPT_VERSION = "lore-v1"

LABELS: dict[int, str] = {
    1: "L1 irrelevant: the item does not serve the query's core need (a different kind of item or topic).",
    2: "L2 weakly relevant: same category or topic, but a key requirement of the query is contradicted, "
    "or the item is only related (an accessory, a neighbouring topic).",
    3: "L3 mostly relevant: the core need is met and nothing important is contradicted, but some requested "
    "attributes are not stated or only partly met.",
    4: "L4 fully relevant: the item satisfies every need of the query, each confirmed by its text.",
}

RULESETS: dict[str, tuple[str, ...]] = {
    "e-commerce": (
        "If the item's product type or category differs from what the query asks for, the label is L1.",
        "An accessory, part or companion product of the requested item is at most L2.",
        "If the type matches but an explicit attribute (brand, model, size, colour, material, gender or age "
        "group, quantity, specification) is contradicted by the item, the label is at most L2.",
        "If the type matches and nothing is contradicted but an explicit attribute is not stated, the label is L3.",
        "L4 requires the type and every explicit attribute to be confirmed by the title, attributes or description.",
        "Judge only from the item's text; do not assume attributes it does not state.",
    ),
    "science": (
        "The query is a scientific claim and the item is a paper's title and abstract.",
        "If the abstract is about a different subject (population, intervention, exposure, outcome or "
        "entity) than the claim, the label is L1.",
        "If it is about the same subject but does not study the relation the claim states, the label is L2.",
        "If it studies the claim's relation but only indirectly or in part, the label is L3.",
        "L4 requires the abstract to report evidence that directly supports or refutes the claim.",
        "Judge only from the abstract; do not use outside knowledge about whether the claim is true.",
    ),
}

DOMAINS: dict[str, str] = {
    "e-commerce": "e-commerce product search",
    "science": "scientific literature search (queries are claims, items are paper abstracts)",
}


@dataclass(frozen=True, slots=True)
class Example:
    """A worked example shown to the model before the real item (few-shot)."""

    query: str
    title: str
    description: str
    answer: str  # in the output format, ending with "Label: Lx"


EXAMPLES: dict[str, tuple[Example, ...]] = {
    "e-commerce": (
        Example(
            "sony wireless noise cancelling headphones",
            "Sony WH-1000XM4 Wireless Noise Canceling Over-Ear Headphones, Black",
            "Industry-leading noise cancellation, Bluetooth 5.0, 30-hour battery life.",
            "Needs: type headphones; brand Sony; wireless; noise cancelling.\n"
            "Checks: headphones matched; Sony matched; wireless matched; noise cancelling matched.\n"
            "Label: L4",
        ),
        Example(
            "men's running shoes size 10",
            "Women's Trail Running Shoe, Size 8",
            "Lightweight trail runner with a grippy rubber outsole.",
            "Needs: type running shoes; for men; size 10.\n"
            "Checks: running shoes matched; men contradicted (women's); size 10 contradicted (size 8).\n"
            "Label: L2",
        ),
        Example(
            "electric coffee grinder",
            "Ceramic Coffee Mug, 12 oz",
            "Dishwasher-safe stoneware mug for coffee and tea.",
            "Needs: type coffee grinder; electric.\nChecks: coffee grinder contradicted (a mug).\nLabel: L1",
        ),
    ),
    "science": (
        Example(
            "Vitamin C supplementation shortens the duration of the common cold.",
            "Vitamin C for preventing and treating the common cold",
            "A meta-analysis of 31 placebo-controlled trials found that regular vitamin C supplementation "
            "reduced the duration of colds by 8% in adults and 14% in children.",
            "Needs: subject vitamin C supplementation; outcome duration of the common cold; relation shortens.\n"
            "Checks: vitamin C supplementation matched; cold duration matched; direct evidence of shorter colds "
            "matched.\nLabel: L4",
        ),
        Example(
            "Aspirin use lowers the risk of colorectal cancer.",
            "Effects of low-dose aspirin on platelet aggregation in healthy volunteers",
            "We measured platelet aggregation in 40 healthy adults after two weeks of 81 mg aspirin daily.",
            "Needs: subject aspirin use; outcome colorectal cancer risk; relation lowers.\n"
            "Checks: aspirin matched; colorectal cancer not stated (platelet aggregation); relation not studied.\n"
            "Label: L2",
        ),
    ),
}

_LABEL_RE = re.compile(r"label\s*[:：=]?\s*[*_`\"']*\s*L?\s*([1-4])\b", re.IGNORECASE)
_LABEL_POSITION_RE = re.compile(r"label\s*[:：=]?\s*[*_`\"']*\s*L?\s*$", re.IGNORECASE)
NEUTRAL = 2.5  # score of a document whose label could not be read at all


def parse_label(text: str) -> int | None:
    """The last ``Label: L<1-4>`` in ``text`` (case, spaces, markdown emphasis tolerated), or None."""
    found = _LABEL_RE.findall(text)
    return int(found[-1]) if found else None


def label_probabilities(completion: Completion, prefix: str = "") -> tuple[float, float, float, float] | None:
    """P(L1..L4) at the label position of a completion with top log-probabilities, or None.

    The label position is the first generated token whose preceding text (``prefix`` + earlier tokens)
    ends with ``Label: L`` (or ``Label:``); the probabilities of the tokens ``1``–``4`` (or ``L1``–``L4``)
    among its alternatives are normalised over the four labels.
    """
    text = prefix
    for token, top in zip(completion.tokens, completion.top_logprobs, strict=False):
        if _LABEL_POSITION_RE.search(text) and top:
            mass = [0.0, 0.0, 0.0, 0.0]
            for alt, lp in top.items():
                key = alt.strip().upper().removeprefix("L")
                if key in ("1", "2", "3", "4"):
                    mass[int(key) - 1] += math.exp(lp)
            total = sum(mass)
            if total > 0:
                return (mass[0] / total, mass[1] / total, mass[2] / total, mass[3] / total)
        text += token
    return None


@dataclass(frozen=True, slots=True)
class Judgement:
    """The LORE judgement of one document.

    Attributes:
        doc_id: the document.
        label: 1–4 (the parsed label, else the most probable one), or None if nothing could be read.
        expected: the expected label ``Σ i·P(Li)`` when probabilities are known, else ``label``
            (:data:`NEUTRAL` when unreadable).
        probs: P(L1..L4) at the label position, when the backend gave log-probabilities.
        reasoning: the model's answer (the path construction / following lines and the label line).
        source: ``"parsed"`` (label read from the text), ``"logprobs"`` (text label + probabilities),
            ``"continuation"`` (no label in the text; read from a one-token continuation), ``"unreadable"``.
        cached: served from the judgement cache (cost nothing).
        tokens_in, tokens_out: what this judgement cost (0 when cached).
    """

    doc_id: str
    label: int | None
    expected: float
    probs: tuple[float, float, float, float] | None = None
    reasoning: str = ""
    source: str = "parsed"
    cached: bool = False
    tokens_in: int = 0
    tokens_out: int = 0


def JudgementCache(maxsize: int = 100_000) -> ResultCache[Judgement]:
    """A bounded, thread-safe LRU of judgements, shareable between reranker instances (head queries)."""
    return ResultCache(maxsize, ttl_s=None)


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
        self.prompt_id = self._prompt_id()

    # ------------------------------------------------------------------------------------ prompt
    @property
    def backend(self) -> LLMBackend:
        """The LLM backend, created on first use (constructing the reranker loads no model)."""
        return self._backend.get()

    def _prompt_id(self) -> str:
        config = [PROMPT_VERSION, self.domain, self.rules, [e.answer for e in self.examples], self.reasoning]
        config += [self.max_item_tokens, self.max_reasoning_tokens]
        return PROMPT_VERSION + ":" + hashlib.sha1(json.dumps(config).encode()).hexdigest()[:12]

    def system_prompt(self) -> str:
        """The instructions: the two reasoning steps, the rules, the label scale, the output format."""
        rules = "\n".join(f"{i}. {r}" for i, r in enumerate(self.rules, start=1))
        labels = "\n".join(LABELS[i] for i in (1, 2, 3, 4))
        if self.reasoning:
            steps = (
                "Work in two steps.\n"
                "Step 1, path construction: list what the query needs as concrete attributes of an item "
                "(its type or subject first, then each explicit or implied requirement), using domain "
                "knowledge to turn vague words into checkable attributes.\n"
                "Step 2, path following: check each needed attribute against the item's title, attributes "
                "and description, and say whether it is matched, contradicted or not stated. Then apply the "
                "rules to choose the label.\n\n"
            )
            answer = (
                "Answer in exactly this format, with no other text:\n"
                "Needs: <the attributes, separated by semicolons>\n"
                "Checks: <each attribute: matched, contradicted or not stated>\n"
                "Label: <L1, L2, L3 or L4>"
            )
        else:
            steps = ""
            answer = "Answer with the label only, in exactly this format: Label: <L1, L2, L3 or L4>"
        return (
            f"You are a relevance judge for {self.domain}. Given a query and an item, decide how well the "
            f"item satisfies the query.\n\n{steps}Rules:\n{rules}\n\nLabels:\n{labels}\n\n{answer}"
        )

    def _item(self, query: str, title: str, text: str) -> str:
        description = self.backend.truncate(" ".join(text.split()), self.max_item_tokens)
        lines = [f"Query: {query}"]
        if title:
            lines.append(f"Item title: {title}")
        lines.append(f"Item description: {description}")
        return "\n".join(lines)

    def prompt(self, query: str, candidate: Candidate) -> ChatPrompt:
        """The chat prompt for one (query, item) pair. Shared text comes first (prefix caching)."""
        messages: list[tuple[str, str]] = [("system", self.system_prompt())]
        for ex in self.examples:
            answer = ex.answer if self.reasoning else ex.answer.splitlines()[-1]
            messages += [("user", self._item(ex.query, ex.title, ex.description)), ("assistant", answer)]
        messages.append(("user", self._item(query, candidate.title, candidate.text)))
        return ChatPrompt(tuple(messages), prefix="" if self.reasoning else "Label: L")

    # --------------------------------------------------------------------------------- judging
    def _key(self, query: Query, c: Candidate) -> Hashable:
        digest = hashlib.sha1(f"{c.title}\x00{c.text}".encode()).hexdigest()
        return (self.backend.model, self.prompt_id, query.text, c.doc_id, digest)

    def _judge(self, completion: Completion, doc_id: str, prefix: str) -> Judgement:
        answer = prefix + completion.text
        probs = label_probabilities(completion, prefix) if self.logprobs else None
        label = parse_label(answer)
        if label is None and probs is not None:
            label = 1 + max(range(4), key=lambda i: probs[i])
        source = "unreadable" if label is None else ("logprobs" if probs is not None else "parsed")
        return Judgement(
            doc_id,
            label,
            _expected(label, probs),
            probs,
            answer.strip(),
            source,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
        )

    def judge(self, query: Query, candidates: Sequence[Candidate]) -> list[Judgement]:
        """Judge every candidate with the LLM (no cache, no policy), in input order."""
        if not candidates:
            return []
        prompts = [self.prompt(query.text, c) for c in candidates]
        max_tokens = self.max_reasoning_tokens if self.reasoning else 1
        completions = self.backend.generate(prompts, max_tokens=max_tokens, logprobs=self.logprobs)
        out = [
            self._judge(comp, c.doc_id, p.prefix) for comp, c, p in zip(completions, candidates, prompts, strict=True)
        ]
        # Fallback: no label in the text → continue "…\nLabel: L" for one token and read the label there.
        retry = [i for i, j in enumerate(out) if j.label is None]
        if retry and self.reasoning:
            follow = [
                ChatPrompt(prompts[i].messages, prefix=completions[i].text.rstrip() + "\nLabel: L") for i in retry
            ]
            extra = self.backend.generate(follow, max_tokens=1, logprobs=self.logprobs or 10)
            for i, p, comp in zip(retry, follow, extra, strict=True):
                j = self._judge(comp, candidates[i].doc_id, p.prefix)
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
        keys = [self._key(query, c) for c in candidates] if candidates else []
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
                judgements.append(replace(cached, cached=True, tokens_in=0, tokens_out=0))
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
            key = self._key(query, c)
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


def _expected(label: int | None, probs: tuple[float, float, float, float] | None) -> float:
    if probs is not None:
        return sum((i + 1) * p for i, p in enumerate(probs))
    return float(label) if label is not None else NEUTRAL
