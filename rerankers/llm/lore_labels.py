"""Reading a LORE label from an answer: the text (``Label: L3``) and the label's token probabilities.

The label position of a generated answer is the token that *is* the label: the digit right after
``Label: L`` (tokenizers that split ``L`` from the digit, e.g. Qwen's), or an ``L1``–``L4`` token right after
``Label:`` (tokenizers that merge them). Its top log-probabilities, restricted to the four labels and
normalised, give P(L1..L4). A backend that stops on an end-of-answer token may report that step's
alternatives as a last ``top_logprobs`` entry without a token; it is read the same way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from twostage_search.engine.cache import ResultCache
from twostage_search.rerankers.llm.backends import Completion

NEUTRAL = 2.5  # score of a document whose label could not be read at all

_LABEL_RE = re.compile(r"label\s*[:：=]?\s*[*_`\"']*\s*L?\s*([1-4])\b", re.IGNORECASE)
_LEAD = r"label\s*[:：=]?\s*[*_`\"']*\s*"
_AFTER_L = re.compile(_LEAD + r"L\s*$", re.IGNORECASE)  # next token is the digit
_BEFORE_L = re.compile(_LEAD + r"$", re.IGNORECASE)  # next token may be a merged "L3"
_DIGIT = re.compile(r"[1-4]")
_L_DIGIT = re.compile(r"L[1-4]", re.IGNORECASE)

Probs = tuple[float, float, float, float]


def parse_label(text: str) -> int | None:
    """The last ``Label: L<1-4>`` in ``text`` (case, spaces, markdown emphasis tolerated), or None."""
    found = _LABEL_RE.findall(text)
    return int(found[-1]) if found else None


def label_position(completion: Completion, prefix: str = "") -> int | None:
    """Index in ``completion.top_logprobs`` of the label token, or None.

    Either the preceding text (``prefix`` + earlier tokens) ends with ``Label: L`` and the position is
    the digit's (or the answer's last step, ended by an end-of-answer token), or it ends with ``Label:``
    and the generated token there is itself ``L1``–``L4``.
    """
    text = prefix
    tokens = completion.tokens
    for i, top in enumerate(completion.top_logprobs):
        token = tokens[i] if i < len(tokens) else None  # None: the step that ended the answer
        if top:
            if _AFTER_L.search(text) and (token is None or _DIGIT.fullmatch(token.strip())):
                return i
            if token is not None and _BEFORE_L.search(text) and _L_DIGIT.fullmatch(token.strip()):
                return i
        if token is None:
            break
        text += token
    return None


def label_probabilities(completion: Completion, prefix: str = "") -> Probs | None:
    """P(L1..L4) at the label position (see :func:`label_position`), normalised over the four, or None.

    At a digit position only digit alternatives (``1``–``4``) count; at a merged position only ``L1``–``L4``.
    """
    i = label_position(completion, prefix)
    if i is None:
        return None
    top = completion.top_logprobs[i]
    token = completion.tokens[i] if i < len(completion.tokens) else None
    merged = token is not None and _L_DIGIT.fullmatch(token.strip()) is not None
    mass = [0.0, 0.0, 0.0, 0.0]
    for alt, lp in top.items():
        key = alt.strip().upper()
        if merged:
            if not _L_DIGIT.fullmatch(key):
                continue
            key = key[1:]
        elif not _DIGIT.fullmatch(key):
            continue
        mass[int(key) - 1] += math.exp(lp)
    total = sum(mass)
    if total <= 0:
        return None
    return (mass[0] / total, mass[1] / total, mass[2] / total, mass[3] / total)


def expected_label(label: int | None, probs: Probs | None) -> float:
    """``Σ i·P(Li)`` when probabilities are known, else the label (:data:`NEUTRAL` when unreadable)."""
    if probs is not None:
        return sum((i + 1) * p for i, p in enumerate(probs))
    return float(label) if label is not None else NEUTRAL


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
    probs: Probs | None = None
    reasoning: str = ""
    source: str = "parsed"
    cached: bool = False
    tokens_in: int = 0
    tokens_out: int = 0


def read_judgement(completion: Completion, doc_id: str, prefix: str, logprobs: bool) -> Judgement:
    """The judgement in one completion (``prefix`` is the prefilled start of the answer)."""
    answer = prefix + completion.text
    probs = label_probabilities(completion, prefix) if logprobs else None
    label = parse_label(answer)
    if label is None and probs is not None:
        label = 1 + max(range(4), key=lambda i: probs[i])
    source = "unreadable" if label is None else ("logprobs" if probs is not None else "parsed")
    return Judgement(
        doc_id,
        label,
        expected_label(label, probs),
        probs,
        answer.strip(),
        source,
        tokens_in=completion.tokens_in,
        tokens_out=completion.tokens_out,
    )


def JudgementCache(maxsize: int = 100_000) -> ResultCache[Judgement]:
    """A bounded, thread-safe LRU of judgements, shareable between reranker instances (head queries)."""
    return ResultCache(maxsize, ttl_s=None)
